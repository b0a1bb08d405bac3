"""Sequence C of spec §4.6, the failover: a daemon died and a successor takes its FUSE
session over from the supervisor, either a new process with the same arguments or a warm
standby that was already waiting in INIT."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from nydus_hybrid import log
from nydus_hybrid.client import DaemonApiError, DaemonClient
from nydus_hybrid.lifecycle import successor
from nydus_hybrid.lifecycle.errors import UpgradeError
from nydus_hybrid.lifecycle.successor import START_TIMEOUT, TAKEOVER_TIMEOUT, Replacement, with_apisock
from nydus_hybrid.lifecycle.supervisor import Supervisor

__all__ = ["Standby", "failover", "failover_to_standby", "spawn_standby"]


@dataclass
class Standby:
    """A successor started ahead of need (``--upgrade``, its own API socket), waiting in INIT:
    a failover then costs a takeover, not a process start-up."""

    apisock: str
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()


def spawn_standby(argv: Sequence[str], apisock: str, log_path: Optional[str] = None) -> Standby:
    """Start ``argv`` as a standby on ``apisock`` and wait until it is in INIT."""
    proc = successor.spawn(with_apisock(argv, apisock, upgrade=True), log_path)
    client = DaemonClient(apisock, timeout=5)
    try:
        successor.wait_state(client, proc, "INIT", START_TIMEOUT)
    except (UpgradeError, OSError) as e:
        proc.kill()
        proc.wait()
        raise UpgradeError(f"standby did not start: {e}") from e
    finally:
        client.close()
    return Standby(apisock, proc)


def failover_to_standby(standby: Standby, sup: Supervisor) -> Replacement:
    """Sequence C with the successor already running: take over, start."""
    started = time.monotonic()
    armed = sup.arm_restore()
    new = DaemonClient(standby.apisock, timeout=TAKEOVER_TIMEOUT)
    try:
        takeover_ms = successor.restore_into(new, standby.process, armed)
        new.put("/api/v1/daemon/start")
        successor.wait_state(new, standby.process, "RUNNING", START_TIMEOUT)
    except (DaemonApiError, OSError, UpgradeError) as e:
        standby.stop()
        raise UpgradeError(f"failover to the standby failed: {e}") from e
    finally:
        new.close()
    total = (time.monotonic() - started) * 1000
    log.event(
        "failover",
        new_pid=standby.process.pid,
        apisock=standby.apisock,
        standby=True,
        takeover_ms=round(takeover_ms, 1),
        total_ms=round(total, 1),
    )
    return Replacement(standby.apisock, standby.process, takeover_ms, total)


def failover(argv: Sequence[str], apisock: str, sup: Supervisor, log_path: Optional[str] = None) -> Replacement:
    """Sequence C: the daemon died; start it again with the same arguments (it finds the
    stale socket, sees the crash and waits in INIT), take over, start."""
    started = time.monotonic()
    argv = with_apisock(argv, apisock, upgrade=False)
    proc, new, takeover_ms = successor.take_over(argv, apisock, sup, log_path)
    try:
        new.put("/api/v1/daemon/start")
        successor.wait_state(new, proc, "RUNNING", START_TIMEOUT)
    finally:
        new.close()
    total = (time.monotonic() - started) * 1000
    log.event(
        "failover", new_pid=proc.pid, apisock=apisock, takeover_ms=round(takeover_ms, 1), total_ms=round(total, 1)
    )
    return Replacement(apisock, proc, takeover_ms, total)
