"""Sequence B of spec §4.6, the hot upgrade: a successor takes over a running daemon's FUSE
session through a ``Supervisor`` that holds the fd in between, and no read fails. Used by
``nydus-hybrid upgrade``, the daemon manager and the tests."""

from __future__ import annotations

import socket
import time
from typing import Optional, Sequence

from nydus_hybrid import log
from nydus_hybrid.client import DaemonApiError, DaemonClient
from nydus_hybrid.lifecycle import successor
from nydus_hybrid.lifecycle.errors import SupervisorError, UpgradeError
from nydus_hybrid.lifecycle.successor import (
    START_TIMEOUT,
    Replacement,
    daemon_argv,
    daemon_pid,
    next_apisock,
    with_apisock,
)
from nydus_hybrid.lifecycle.supervisor import Supervisor

__all__ = ["Replacement", "UpgradeError", "daemon_pid", "hot_upgrade", "next_apisock", "standalone_upgrade"]


def hot_upgrade(
    apisock: str,
    sup: Supervisor,
    argv: Optional[Sequence[str]] = None,
    new_apisock: Optional[str] = None,
    log_path: Optional[str] = None,
) -> Replacement:
    """Sequence B: refresh the supervisor's state from the running daemon, start a successor
    with ``--upgrade``, take over, stop the old one (no unmount), start the new one. The old
    daemon serves until the new one is READY; requests in between queue in the kernel."""
    started = time.monotonic()
    old_pid = daemon_pid(apisock)
    argv = list(argv) if argv else daemon_argv(old_pid)
    new_apisock = new_apisock or next_apisock(apisock)
    old = DaemonClient(apisock)
    try:
        gen = sup.generation
        try:
            old.put("/api/v1/daemon/fuse/sendfd")
        except DaemonApiError as e:
            raise UpgradeError(f"the running daemon could not hand over its state: {e.message}") from e
        if not sup.wait_for_state(gen):
            raise UpgradeError("the supervisor received no state from the running daemon")
        proc, new, takeover_ms = successor.take_over(
            with_apisock(argv, new_apisock, upgrade=True), new_apisock, sup, log_path
        )
        try:
            t_exit = time.monotonic()
            old.put("/api/v1/daemon/exit")  # 204 once its workers have stopped
            new.put("/api/v1/daemon/start")
            gap_ms = (time.monotonic() - t_exit) * 1000  # nobody reads /dev/fuse in this window
            successor.wait_state(new, proc, "RUNNING", START_TIMEOUT)
        finally:
            new.close()
    finally:
        old.close()
    successor.wait_gone(old_pid, 10.0)
    total = (time.monotonic() - started) * 1000
    log.event(
        "hot_upgrade",
        old_pid=old_pid,
        new_pid=proc.pid,
        apisock=new_apisock,
        takeover_ms=round(takeover_ms, 1),
        gap_ms=round(gap_ms, 1),
        total_ms=round(total, 1),
    )
    return Replacement(new_apisock, proc, takeover_ms, total, gap_ms)


def standalone_upgrade(
    apisock: str,
    supervisor_path: Optional[str] = None,
    argv: Optional[Sequence[str]] = None,
    new_apisock: Optional[str] = None,
    log_path: Optional[str] = None,
) -> Replacement:
    """``nydus-hybrid upgrade``: for a daemon with ``--supervisor`` and nobody listening there,
    act as its supervisor for the duration of the upgrade."""
    info = DaemonClient(apisock, timeout=5).get("/api/v1/daemon")
    path = supervisor_path or info.get("supervisor")
    if not path:
        raise UpgradeError("the daemon was started without --supervisor: it cannot hand over its FUSE session")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        raise UpgradeError(f"another supervisor listens at {path} (nydus-snapshotter?): upgrade through it")
    except OSError:
        pass
    finally:
        probe.close()
    with Supervisor(path) as sup:
        try:
            return hot_upgrade(apisock, sup, argv, new_apisock, log_path)
        except SupervisorError as e:
            raise UpgradeError(str(e)) from e
