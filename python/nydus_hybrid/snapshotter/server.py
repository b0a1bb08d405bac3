"""`python -m nydus_hybrid.snapshotter`: the snapshotter process (spec A2). It serves the
Snapshots service on a unix socket (made in a 0700 directory; a stale socket there is
replaced, anything else at that path is refused) until SIGTERM or SIGINT, then stops
accepting, lets calls in flight finish, and closes the metastore."""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import grpc

from nydus_hybrid import log
from nydus_hybrid.manager.manager import Manager
from nydus_hybrid.snapshotter.remote import RemoteFs
from nydus_hybrid.snapshotter.service import SnapshotsService
from nydus_hybrid.snapshotter.snapshot import Snapshotter

DEFAULT_ROOT = "/var/lib/containerd-nydus"
DEFAULT_ADDRESS = "/run/containerd-nydus/containerd-nydus-grpc.sock"


def prepare_socket(address: str) -> None:
    parent = os.path.dirname(os.path.abspath(address))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(address)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SystemExit(f"nydus-hybrid snapshotter: error: {address} exists and is not a socket")
    os.unlink(address)


def remote_fs(a: argparse.Namespace) -> RemoteFs:
    """The daemon manager under the snapshotter's root (its daemons' mounts land in
    `<root>/snapshots/<id>/mnt`, nydus-snapshotter's layout), recovered from its store."""
    mode = {"multiple": "dedicated", "dedicated": "dedicated", "shared": "shared"}[a.daemon_mode]
    nydusd = a.nydusd.split() if a.nydusd else None
    manager = Manager(
        a.root,
        daemon_mode=mode,
        recover_policy=a.recover_policy,
        nydusd=nydusd,
        fs_driver=a.fs_driver,
        log_level=a.log_level,
    )
    manager.recover()
    return RemoteFs(manager, os.path.join(a.root, "cache"), a.plain_http_registry)


class Server:
    def __init__(self, root: str, address: str, remote: Optional[RemoteFs] = None, workers: int = 16) -> None:
        self.address = address
        self.snapshotter = Snapshotter(root, remote)
        self.grpc = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshots"))
        self.grpc.add_generic_rpc_handlers((SnapshotsService(self.snapshotter).handler(),))
        prepare_socket(address)
        if self.grpc.add_insecure_port(f"unix:{os.path.abspath(address)}") == 0:
            raise SystemExit(f"nydus-hybrid snapshotter: error: cannot listen on {address}")

    def start(self) -> None:
        self.grpc.start()
        log.event("snapshotter_ready", address=self.address, root=str(self.snapshotter.root))

    def stop(self, grace: float = 5.0) -> None:
        self.grpc.stop(grace).wait()
        self.snapshotter.close()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nydus-hybrid snapshotter", description="containerd remote snapshotter")
    p.add_argument("--root", default=DEFAULT_ROOT, help=f"state directory (default {DEFAULT_ROOT})")
    p.add_argument("--address", default=DEFAULT_ADDRESS, help=f"gRPC unix socket (default {DEFAULT_ADDRESS})")
    p.add_argument("--log-level", default="info", choices=["trace", "debug", "info", "warn", "error"])
    p.add_argument(
        "--daemon-mode",
        default="multiple",
        choices=["multiple", "dedicated", "shared"],
        help="one daemon per image (multiple, the default) or one for all (shared)",
    )
    p.add_argument("--fs-driver", default="fusedev", choices=["fusedev", "fscache"])
    p.add_argument("--recover-policy", default="failover", choices=["none", "restart", "failover"])
    p.add_argument("--nydusd", help="the daemon command (default: python -m nydus_hybrid.daemon)")
    p.add_argument(
        "--plain-http-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a registry to reach over http (repeatable)",
    )
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    a = parse_args(argv)
    log.setup("debug" if a.log_level == "trace" else a.log_level)
    os.makedirs(a.root, mode=0o700, exist_ok=True)
    server = Server(a.root, a.address, remote_fs(a))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server.start()
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
