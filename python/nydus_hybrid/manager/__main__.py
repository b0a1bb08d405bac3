"""``python -m nydus_hybrid.manager``: recover daemons and instances from the store, then
serve the manager's API on ``<root>/system.sock`` until SIGTERM. Daemons outlive the
manager: a restart picks them up again."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
from typing import Optional, Sequence

from nydus_hybrid import log
from nydus_hybrid.manager.controller import serve
from nydus_hybrid.manager.errors import ManagerError
from nydus_hybrid.manager.manager import FS_DRIVERS, MODES, POLICIES, Manager, default_nydusd


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nydus_hybrid.manager", description=__doc__)
    p.add_argument("--root", default="/var/lib/nydus-hybrid", help="state directory (nydus.db, sockets, mounts)")
    p.add_argument("--daemon-mode", choices=MODES, default="shared")
    p.add_argument("--recover-policy", choices=POLICIES, default="failover")
    p.add_argument(
        "--fs-driver",
        choices=FS_DRIVERS,
        default="fusedev",
        help="fscache: one singleton daemon, EROFS mounts over /dev/cachefiles (or the simulator "
        "named by NYDUS_HYBRID_CACHEFILES=sim:<socket>)",
    )
    p.add_argument("--fscache-domain", default="", help="a shared fscache domain id (default: one per instance)")
    p.add_argument(
        "--failover-standby",
        action="store_true",
        help="keep a successor of each daemon waiting in INIT, so a failover is a takeover, not a start-up",
    )
    p.add_argument("--nydusd", help="the daemon command (default: this Python's nydus_hybrid.daemon)")
    p.add_argument("--thread-num", type=int, default=4)
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    log.setup(a.log_level)
    try:
        m = Manager(
            a.root,
            daemon_mode=a.daemon_mode,
            recover_policy=a.recover_policy,
            nydusd=shlex.split(a.nydusd) if a.nydusd else default_nydusd(),
            thread_num=a.thread_num,
            log_level=a.log_level,
            fs_driver=a.fs_driver,
            fscache_domain=a.fscache_domain,
            standby=a.failover_standby,
        )
        m.recover()
        if m.daemon_mode == "shared":
            m.shared_daemon()
    except ManagerError as e:
        print(f"nydus-hybrid manager: error: {e}", file=sys.stderr)
        return 1
    return asyncio.run(_serve(m, f"{m.root}/system.sock"))


async def _serve(m: Manager, path: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve(m, path)
    log.event("manager_ready", root=m.root, socket=path, mode=m.daemon_mode, policy=m.recover_policy)
    await stop.wait()
    await runner.cleanup()
    await loop.run_in_executor(None, m.close)
    return 0


if __name__ == "__main__":
    sys.exit(main())
