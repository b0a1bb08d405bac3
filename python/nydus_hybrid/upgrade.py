"""Replacing a running daemon without failing a read (spec §4.6): the hot upgrade (sequence
B) and the failover after a crash (sequence C), driven through the daemon's HTTP API and a
``Supervisor`` that holds the FUSE fd in between. Used by ``nydus-hybrid upgrade``, the
daemon manager and the tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from nydus_hybrid import log
from nydus_hybrid.daemon.client import DaemonApiError, DaemonClient
from nydus_hybrid.supervisor import Supervisor, SupervisorError, peer_pid

START_TIMEOUT = 10.0  # the snapshotter's wait for a new daemon's socket
TAKEOVER_TIMEOUT = 30.0  # the Go client's takeover timeout


class UpgradeError(Exception):
    """A sequence that could not complete; the message says at which step."""


@dataclass
class Replacement:
    apisock: str
    process: subprocess.Popen
    takeover_ms: float
    total_ms: float
    # Upgrade: from asking the old daemon to stop to the new one serving. Failover: from
    # the start of the successor to it serving (the crash itself comes before).
    gap_ms: float = 0.0


def daemon_pid(apisock: str) -> int:
    """The pid of the process serving ``apisock`` (from the socket's peer credentials)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(apisock)
        return peer_pid(s)
    except OSError as e:
        raise UpgradeError(f"no daemon answers at {apisock}: {e.strerror or e}") from e
    finally:
        s.close()


def daemon_argv(pid: int) -> List[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def next_apisock(apisock: str) -> str:
    """api.sock -> api1.sock -> api2.sock ... in the same directory (as the snapshotter)."""
    d, name = os.path.split(apisock)
    m = re.fullmatch(r"(.*?)(\d*)(\.sock)?", name)
    stem, num, ext = m.group(1), m.group(2), m.group(3) or ""
    return os.path.join(d, f"{stem}{int(num or 0) + 1}{ext}")


def with_apisock(argv: Sequence[str], apisock: str, upgrade: bool) -> List[str]:
    """``argv`` with its ``--apisock`` replaced and ``--upgrade`` added or removed."""
    out: List[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--apisock", "-A"):
            skip = True
        elif a.startswith("--apisock=") or a == "--upgrade":
            pass
        else:
            out.append(a)
    out += ["--apisock", apisock] + (["--upgrade"] if upgrade else [])
    return out


def _spawn(argv: Sequence[str], log_path: Optional[str]) -> subprocess.Popen:
    err = open(log_path, "ab") if log_path else None
    try:
        # Its own session: the daemon outlives whoever ran the upgrade.
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    finally:
        if err:
            err.close()


def _wait_state(client: DaemonClient, proc: subprocess.Popen, want: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise UpgradeError(f"the new daemon exited with {proc.returncode} before reaching {want}")
        try:
            client.wait_state(want, timeout=min(0.5, max(0.05, deadline - time.monotonic())))
            return
        except TimeoutError as e:
            if time.monotonic() >= deadline:
                raise UpgradeError(f"the new daemon did not reach {want} in {timeout:.0f}s: {e}") from e


def _restore_into(new: DaemonClient, proc: subprocess.Popen, armed) -> float:
    """PUT takeover on a successor waiting in INIT; returns ms until it is READY."""
    t0 = time.monotonic()
    new.put("/api/v1/daemon/fuse/takeover")
    if not armed.wait(5):
        raise UpgradeError("takeover answered but the supervisor served no state")
    _wait_state(new, proc, "READY", START_TIMEOUT)
    return (time.monotonic() - t0) * 1000


def _take_over(argv: List[str], apisock: str, sup: Supervisor, log_path: Optional[str]) -> tuple:
    """Start a successor, let it take the supervisor's state; returns it READY."""
    armed = sup.arm_restore()
    proc = _spawn(argv, log_path)
    new = DaemonClient(apisock, timeout=TAKEOVER_TIMEOUT)
    try:
        _wait_state(new, proc, "INIT", START_TIMEOUT)
        return proc, new, _restore_into(new, proc, armed)
    except (DaemonApiError, OSError, UpgradeError) as e:
        new.close()
        # It never served a request: killing it loses nothing, and the mount stays with
        # the daemon (or supervisor) that holds it.
        proc.kill()
        proc.wait()
        raise UpgradeError(f"takeover failed: {e}") from e


@dataclass
class Standby:
    """A successor started ahead of need (``--upgrade``, its own API socket), waiting in INIT:
    a failover then costs a takeover, not a process start-up."""

    apisock: str
    process: subprocess.Popen

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()


def spawn_standby(argv: Sequence[str], apisock: str, log_path: Optional[str] = None) -> Standby:
    """Start ``argv`` as a standby on ``apisock`` and wait until it is in INIT."""
    proc = _spawn(with_apisock(argv, apisock, upgrade=True), log_path)
    client = DaemonClient(apisock, timeout=5)
    try:
        _wait_state(client, proc, "INIT", START_TIMEOUT)
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
        takeover_ms = _restore_into(new, standby.process, armed)
        new.put("/api/v1/daemon/start")
        _wait_state(new, standby.process, "RUNNING", START_TIMEOUT)
    except (DaemonApiError, OSError, UpgradeError) as e:
        standby.stop()
        raise UpgradeError(f"failover to the standby failed: {e}") from e
    finally:
        new.close()
    total = (time.monotonic() - started) * 1000
    log.event("failover", new_pid=standby.process.pid, apisock=standby.apisock, standby=True,
              takeover_ms=round(takeover_ms, 1), total_ms=round(total, 1))
    return Replacement(standby.apisock, standby.process, takeover_ms, total)


def hot_upgrade(apisock: str, sup: Supervisor, argv: Optional[Sequence[str]] = None,
                new_apisock: Optional[str] = None, log_path: Optional[str] = None) -> Replacement:
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
        proc, new, takeover_ms = _take_over(with_apisock(argv, new_apisock, upgrade=True), new_apisock, sup, log_path)
        try:
            t_exit = time.monotonic()
            old.put("/api/v1/daemon/exit")  # 204 once its workers have stopped
            new.put("/api/v1/daemon/start")
            gap_ms = (time.monotonic() - t_exit) * 1000  # nobody reads /dev/fuse in this window
            _wait_state(new, proc, "RUNNING", START_TIMEOUT)
        finally:
            new.close()
    finally:
        old.close()
    _wait_gone(old_pid, 10.0)
    total = (time.monotonic() - started) * 1000
    log.event("hot_upgrade", old_pid=old_pid, new_pid=proc.pid, apisock=new_apisock, takeover_ms=round(takeover_ms, 1),
              gap_ms=round(gap_ms, 1), total_ms=round(total, 1))
    return Replacement(new_apisock, proc, takeover_ms, total, gap_ms)


def failover(argv: Sequence[str], apisock: str, sup: Supervisor, log_path: Optional[str] = None) -> Replacement:
    """Sequence C: the daemon died; start it again with the same arguments (it finds the
    stale socket, sees the crash and waits in INIT), take over, start."""
    started = time.monotonic()
    argv = with_apisock(argv, apisock, upgrade=False)
    proc, new, takeover_ms = _take_over(argv, apisock, sup, log_path)
    try:
        new.put("/api/v1/daemon/start")
        _wait_state(new, proc, "RUNNING", START_TIMEOUT)
    finally:
        new.close()
    total = (time.monotonic() - started) * 1000
    log.event("failover", new_pid=proc.pid, apisock=apisock, takeover_ms=round(takeover_ms, 1), total_ms=round(total, 1))
    return Replacement(apisock, proc, takeover_ms, total)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # our own child: reap it
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)  # it stopped serving already (exit answered); don't leave it behind


def standalone_upgrade(apisock: str, supervisor_path: Optional[str] = None, argv: Optional[Sequence[str]] = None,
                       new_apisock: Optional[str] = None, log_path: Optional[str] = None) -> Replacement:
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
