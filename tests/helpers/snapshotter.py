"""nydus-snapshotter's side of failover and hot upgrade, as it drives nydusd (spec §4.1-4.6),
written from the protocol and independent of the package's own supervisor, so it checks the
daemon against what the snapshotter really does:

* its supervisor re-creates the listener for every exchange and accepts exactly one
  connection (a daemon connecting on its own takes the one meant for `sendfd`);
* `send_states` (sequence A.4): listen, then PUT sendfd, then receive;
* `upgrade` (B) and `failover` (C): serve the stored state to one connection, start the
  successor, take over, start it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from nydus_hybrid.client import DaemonApiError, DaemonClient
from nydus_hybrid.lifecycle import successor
from nydus_hybrid.lifecycle.successor import next_apisock, with_apisock

EXCHANGE_TIMEOUT = 10.0  # the snapshotter's SendStatesTimeout
RECV = 256 * 1024


class OneShotSupervisor:
    """One listener per exchange, one connection per listener; keeps the latest (bytes, fd)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.state: Optional[Tuple[bytes, int]] = None
        self.failed_sendfds: List[str] = []

    def _listen(self) -> socket.socket:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(self.path)
        ls.listen(1)
        ls.settimeout(EXCHANGE_TIMEOUT)
        return ls

    def _keep(self, data: bytes, fd: int) -> None:
        if self.state is not None:
            os.close(self.state[1])
        self.state = (data, fd)

    def send_states(self, apisock: str, meanwhile: Optional[Callable[[], None]] = None) -> None:
        """Have the daemon at `apisock` hand over its state: a failed sendfd is recorded.
        `meanwhile` runs while the listener waits, before the sendfd: what another of the
        snapshotter's goroutines does at that moment (a mount for a second container)."""
        ls = self._listen()
        got: List[Tuple[bytes, int]] = []
        errors: List[str] = []

        def receive() -> None:
            try:
                conn, _ = ls.accept()
            except OSError as e:
                errors.append(f"accept: {e}")
                return
            finally:
                ls.close()  # one connection per exchange
            with conn:
                conn.settimeout(EXCHANGE_TIMEOUT)
                chunks, fds = [], []
                while True:
                    data, new_fds, _flags, _addr = socket.recv_fds(conn, RECV, 16)
                    fds += new_fds
                    if not data:
                        break
                    chunks.append(data)
                if not fds:
                    errors.append("received no control file descriptor")
                    return
                for extra in fds[1:]:
                    os.close(extra)
                got.append((b"".join(chunks), fds[0]))

        t = threading.Thread(target=receive, name="one-shot-receive")
        t.start()
        if meanwhile is not None:
            meanwhile()
        c = DaemonClient(apisock, timeout=EXCHANGE_TIMEOUT)
        try:
            c.put("/api/v1/daemon/fuse/sendfd")
        except (DaemonApiError, OSError) as e:
            self.failed_sendfds.append(str(e))
        finally:
            c.close()
        t.join(EXCHANGE_TIMEOUT + 1)
        if got:
            self._keep(*got[0])
        elif errors:
            self.failed_sendfds.append("; ".join(errors))

    def serve_state(self) -> threading.Thread:
        """SendStatesTimeout: serve the stored state to the next (single) connection."""
        assert self.state is not None, "the supervisor holds no state to serve"
        data, fd = self.state
        ls = self._listen()

        def serve() -> None:
            try:
                conn, _ = ls.accept()
            except OSError:
                return
            finally:
                ls.close()
            with conn:
                sent = socket.send_fds(conn, [data], [fd])
                if sent < len(data):
                    conn.sendall(data[sent:])

        t = threading.Thread(target=serve, name="one-shot-serve")
        t.start()
        return t

    def close(self) -> None:
        if self.state is not None:
            os.close(self.state[1])
            self.state = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def wait_state(apisock: str, proc: subprocess.Popen[bytes], want: str) -> None:
    c = DaemonClient(apisock, timeout=2)
    try:
        successor.wait_state(c, proc, want, EXCHANGE_TIMEOUT)
    finally:
        c.close()


class Snapshotter:
    """Drives one daemon (and its successors) the way nydus-snapshotter does."""

    def __init__(self, argv: Sequence[str], apisock: str, proc: subprocess.Popen[bytes], sup: OneShotSupervisor):
        self.argv, self.apisock, self.proc, self.sup = list(argv), apisock, proc, sup
        self.procs: List[subprocess.Popen[bytes]] = [proc]
        self.logs = Path(apisock).parent

    def _spawn(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"successor-{len(self.procs)}.log", "wb")
        p = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(p)
        return p

    def _take_over_and_start(self, apisock: str, proc: subprocess.Popen[bytes], old: Optional[str]) -> None:
        wait_state(apisock, proc, "INIT")
        c = DaemonClient(apisock, timeout=EXCHANGE_TIMEOUT)
        try:
            c.put("/api/v1/daemon/fuse/takeover")
            wait_state(apisock, proc, "READY")
            if old is not None:
                o = DaemonClient(old, timeout=EXCHANGE_TIMEOUT)
                try:
                    o.put("/api/v1/daemon/exit")
                finally:
                    o.close()
                self.proc.wait(EXCHANGE_TIMEOUT)
            c.put("/api/v1/daemon/start")
        finally:
            c.close()
        wait_state(apisock, proc, "RUNNING")
        self.apisock, self.proc = apisock, proc

    def upgrade(self) -> None:
        """Sequence B, then A.4 for the new daemon."""
        served = self.sup.serve_state()
        new_sock = next_apisock(self.apisock)
        proc = self._spawn(with_apisock(self.argv, new_sock, upgrade=True))
        self._take_over_and_start(new_sock, proc, old=self.apisock)
        served.join(EXCHANGE_TIMEOUT)
        self.sup.send_states(self.apisock)

    def failover(self) -> None:
        """kill -9, then sequence C (same arguments and socket, no --upgrade), then A.4."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(EXCHANGE_TIMEOUT)
        served = self.sup.serve_state()
        proc = self._spawn(with_apisock(self.argv, self.apisock, upgrade=False))
        self._take_over_and_start(self.apisock, proc, old=None)
        served.join(EXCHANGE_TIMEOUT)
        self.sup.send_states(self.apisock)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
