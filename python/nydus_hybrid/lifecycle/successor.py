"""What every replacement of a daemon shares (spec §4.6): start a successor, wait for its
states, have it take over the supervisor's state. The sequences themselves are in
``upgrade`` (B, hot upgrade) and ``failover`` (C, after a crash)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from nydus_hybrid import waits
from nydus_hybrid.client import DaemonApiError, DaemonClient
from nydus_hybrid.lifecycle.errors import UpgradeError
from nydus_hybrid.lifecycle.supervisor import Supervisor, peer_pid

START_TIMEOUT = waits.scaled(10.0)  # the snapshotter's wait for a new daemon's socket
TAKEOVER_TIMEOUT = waits.scaled(30.0)  # the Go client's takeover timeout


@dataclass
class Replacement:
    apisock: str
    process: subprocess.Popen[bytes]
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
    assert m is not None  # every part is optional: any name without a newline matches
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


def spawn(argv: Sequence[str], log_path: Optional[str]) -> subprocess.Popen[bytes]:
    err = open(log_path, "ab") if log_path else None
    try:
        # Its own session: the daemon outlives whoever ran the upgrade.
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    finally:
        if err:
            err.close()


def wait_state(client: DaemonClient, proc: subprocess.Popen[bytes], want: str, timeout: float) -> None:
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


def restore_into(new: DaemonClient, proc: subprocess.Popen[bytes], armed: threading.Event) -> float:
    """PUT takeover on a successor waiting in INIT; returns ms until it is READY."""
    t0 = time.monotonic()
    new.put("/api/v1/daemon/fuse/takeover")
    if not armed.wait(5):
        raise UpgradeError("takeover answered but the supervisor served no state")
    wait_state(new, proc, "READY", START_TIMEOUT)
    return (time.monotonic() - t0) * 1000


def take_over(
    argv: List[str], apisock: str, sup: Supervisor, log_path: Optional[str]
) -> Tuple[subprocess.Popen[bytes], DaemonClient, float]:
    """Start a successor, let it take the supervisor's state; returns it READY."""
    armed = sup.arm_restore()
    proc = spawn(argv, log_path)
    new = DaemonClient(apisock, timeout=TAKEOVER_TIMEOUT)
    try:
        wait_state(new, proc, "INIT", START_TIMEOUT)
        return proc, new, restore_into(new, proc, armed)
    except (DaemonApiError, OSError, UpgradeError) as e:
        new.close()
        # It never served a request: killing it loses nothing, and the mount stays with
        # the daemon (or supervisor) that holds it.
        proc.kill()
        proc.wait()
        raise UpgradeError(f"takeover failed: {e}") from e


def wait_gone(pid: int, timeout: float) -> None:
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
