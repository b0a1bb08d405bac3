"""`python -m nydus_hybrid.snapshotter`: the snapshotter process (spec A2). It serves the
Snapshots service on a unix socket (made in a 0700 directory; a stale socket there is
replaced, anything else at that path is refused) until SIGTERM or SIGINT, then stops
accepting, lets calls in flight finish, and closes the metastore."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Protocol

import grpc

from nydus_hybrid import log
from nydus_hybrid.manager.manager import Manager
from nydus_hybrid.snapshotter.backend import load_template
from nydus_hybrid.snapshotter.config import DAEMON_MODES, ConfigError, SnapshotterConfig, load
from nydus_hybrid.snapshotter.keychain import CriImageProxy, Keychain
from nydus_hybrid.snapshotter.remote import RemoteFs
from nydus_hybrid.snapshotter.service import SnapshotBackend, SnapshotsService
from nydus_hybrid.snapshotter.snapshot import Snapshotter


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


def remote_fs(cfg: SnapshotterConfig, keychain: Optional[Keychain] = None) -> RemoteFs:
    """The daemon manager under the snapshotter's root (its daemons' mounts land in
    `<root>/snapshots/<id>/mnt`, nydus-snapshotter's layout), recovered from its store."""
    manager = Manager(
        cfg.root,
        daemon_mode=cfg.manager_mode,
        recover_policy=cfg.recover_policy,
        nydusd=cfg.nydusd_path.split() or None,
        fs_driver=cfg.fs_driver,
        failover_policy=cfg.failover_policy,
        thread_num=cfg.threads_number or 4,
        log_level=cfg.log_level,
    )
    manager.recover()
    return RemoteFs(
        manager,
        cfg.effective_cache_dir(),
        cfg.plain_http_registries,
        keychain,
        template=load_template(cfg.nydusd_config) if cfg.nydusd_config else None,
        mirrors_dir=cfg.mirrors_dir,
        skip_verify=cfg.skip_ssl_verify,
    )


class ServedSnapshotter(SnapshotBackend, Protocol):
    def close(self) -> None: ...


class Server:
    """The Snapshots service of `snapshotter` (the overlay one with its Nydus remote, or
    the devmapper one) on a unix socket, with the CRI image proxy beside it when given."""

    def __init__(
        self,
        address: str,
        snapshotter: ServedSnapshotter,
        workers: int = 16,
        cri_proxy: Optional[CriImageProxy] = None,
        root: str = "",
    ) -> None:
        self.address = address
        self.root = root
        self.snapshotter = snapshotter
        self.cri_proxy = cri_proxy
        self.grpc = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshots"))
        handlers: List[grpc.GenericRpcHandler] = [SnapshotsService(self.snapshotter).handler()]
        if cri_proxy is not None:
            handlers.append(cri_proxy)
        self.grpc.add_generic_rpc_handlers(tuple(handlers))
        prepare_socket(address)
        if self.grpc.add_insecure_port(f"unix:{os.path.abspath(address)}") == 0:
            raise SystemExit(f"nydus-hybrid snapshotter: error: cannot listen on {address}")

    def start(self) -> None:
        self.grpc.start()
        log.event("snapshotter_ready", address=self.address, root=self.root)

    def stop(self, grace: float = 5.0) -> None:
        log.event("snapshotter_stopping", address=self.address)
        if not self.grpc.stop(grace).wait(grace + 5):
            log.event("snapshotter_stop_slow", logging.WARNING, grace=grace)
        self.snapshotter.close()
        if self.cri_proxy is not None:
            self.cri_proxy.close()
        log.event("snapshotter_stopped", address=self.address)


def parse_args(argv: Optional[List[str]] = None) -> SnapshotterConfig:
    """nydus-snapshotter's flags over its TOML file (`--config`) over the defaults."""
    p = argparse.ArgumentParser(prog="nydus-hybrid snapshotter", description="containerd remote snapshotter")
    p.add_argument("--config", help="nydus-snapshotter's TOML configuration (version = 1)")
    p.add_argument("--root", help="state directory")
    p.add_argument("--address", help="gRPC unix socket")
    p.add_argument("--log-level", choices=["trace", "debug", "info", "warn", "error"])
    p.add_argument("--daemon-mode", choices=sorted(DAEMON_MODES), help="multiple (one daemon per image) or shared")
    p.add_argument("--fs-driver", choices=["fusedev", "fscache"])
    p.add_argument("--recover-policy", choices=["none", "restart", "failover"])
    p.add_argument("--nydusd", help="the daemon command (default: python -m nydus_hybrid.daemon)")
    p.add_argument("--nydusd-config", help="the nydusd JSON every image's daemon config starts from")
    p.add_argument(
        "--plain-http-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a registry to reach over http (repeatable)",
    )
    a = p.parse_args(argv)
    try:
        cfg = load(a.config)
        overrides = {
            "root": a.root,
            "address": a.address,
            "log_level": a.log_level,
            "daemon_mode": a.daemon_mode,
            "fs_driver": a.fs_driver,
            "recover_policy": a.recover_policy,
            "nydusd_path": a.nydusd,
            "nydusd_config": a.nydusd_config,
        }
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        cfg.plain_http_registries = [*cfg.plain_http_registries, *a.plain_http_registry]
        return cfg.validate()
    except ConfigError as e:
        p.exit(2, f"nydus-hybrid snapshotter: config error: {e}\n")


def main(argv: Optional[List[str]] = None) -> int:
    cfg = parse_args(argv)
    log.setup("debug" if cfg.log_level == "trace" else cfg.log_level)
    os.makedirs(cfg.root, mode=0o700, exist_ok=True)
    keychain = Keychain()
    proxy = CriImageProxy(keychain, cfg.effective_image_service()) if cfg.enable_cri_keychain else None
    snapshotter = Snapshotter(cfg.root, remote_fs(cfg, keychain))

    def renew() -> None:
        updated = snapshotter.renew_credentials()
        if updated:
            log.event("credentials_renewed", instances=updated)

    # Renewal starts after recovery (remote_fs recovered the daemons), so it sees them all.
    serve(Server(cfg.address, snapshotter, cri_proxy=proxy, root=cfg.root), cfg.credential_renewal_interval, renew)
    return 0


def serve(server: Server, every: float = 0.0, task: Optional[Callable[[], None]] = None) -> None:
    """Run `server` until SIGTERM or SIGINT, running `task` every `every` seconds (0: never)."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server.start()
    next_run = time.monotonic() + every
    # A timed wait: a signal that lands on one of grpc's threads only runs its handler once
    # the main thread executes again, and an untimed wait would never wake for it.
    while not done.wait(0.5):
        if task is not None and every and time.monotonic() >= next_run:
            task()
            next_run = time.monotonic() + every
    server.stop()


if __name__ == "__main__":
    sys.exit(main())
