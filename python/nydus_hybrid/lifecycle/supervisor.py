"""The supervisor of nydusd's failover and hot upgrade (spec §4.1-4.2), and the daemon's end
of its wire protocol.

A daemon hands its state to the supervisor so that a successor can take over its FUSE
session: the state bytes plus one file descriptor (a dup of ``/dev/fuse``) over an AF_UNIX
stream, with the fd in an SCM_RIGHTS message. There is no framing: the daemon closes the
connection and EOF ends the state. The supervisor keeps only the latest (bytes, fd), and
hands it to the next daemon that connects while a restore is armed. The bytes are opaque
here; ``nydus_hybrid.lifecycle.handover`` defines them.

The daemon always connects; the supervisor always listens. nydus-snapshotter re-creates its
listener for each exchange and accepts exactly one connection, for the ``sendfd`` it asked
for: a daemon that connected on its own would take that connection and the ``sendfd`` would
fail. Ours listens for as long as it lives, so a daemon may also push its state on its own
(after start, a mount or an umount), and the process that owns it says so to the daemons
it starts with ``PUSH_ENV``. Without it a daemon connects only on ``sendfd``. Both speak the
same bytes, so either supervisor works with either daemon."""

from __future__ import annotations

import array
import logging
import os
import select
import socket
import struct
import threading
import time
from typing import Any, Iterable, List, Optional, Set, Tuple

from nydus_hybrid import log, waits
from nydus_hybrid.lifecycle.errors import SupervisorError

LOG = logging.getLogger("nydus_hybrid.lifecycle.supervisor")

RECV_CHUNK = 256 * 1024  # the supervisor's read size
RESTORE_BUF = 32 * 1024  # the daemon's first recvmsg on restore
MAX_FDS = 16
# A state describes mounts and configs; anything near this is not a state.
MAX_STATE = 64 << 20
EXCHANGE_TIMEOUT = waits.scaled(10.0)  # SendStatesTimeout of the snapshotter
# Set to "1" by a process whose Supervisor takes unsolicited pushes, for its daemons (and
# their successors) to inherit. Never set for nydus-snapshotter's one-shot supervisor.
PUSH_ENV = "NYDUS_HYBRID_SUPERVISOR_TAKES_PUSHES"


def takes_pushes() -> bool:
    """Whether our supervisor may be pushed a state that it did not ask for."""
    return os.environ.get(PUSH_ENV) == "1"


def _fds_of(ancdata: Iterable[Tuple[int, int, bytes]]) -> List[int]:
    fds: List[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


def _receive(conn: socket.socket, first_buf: int) -> Tuple[bytes, int]:
    """Read state bytes until EOF; keep the first fd received and close any others."""
    chunks, size, fds = [], 0, []
    bufsize = first_buf
    try:
        while True:
            data, anc, _flags, _addr = conn.recvmsg(bufsize, socket.CMSG_SPACE(MAX_FDS * 4))
            fds.extend(_fds_of(anc))
            if not data:
                break
            size += len(data)
            if size > MAX_STATE:
                raise SupervisorError(f"state larger than {MAX_STATE} bytes: refused")
            chunks.append(data)
            bufsize = RECV_CHUNK
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    if not fds:
        raise SupervisorError("received no control file descriptor")
    for extra in fds[1:]:
        os.close(extra)
    return b"".join(chunks), fds[0]


def _send(conn: socket.socket, data: bytes, fd: int) -> None:
    sent = conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])
    if sent < len(data):
        conn.sendall(data[sent:])  # what the kernel did not take at once goes as plain writes


def peer_pid(conn: socket.socket) -> int:
    """The pid of the process at the other end of a connected unix socket."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _connect(path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise SupervisorError(f"supervisor {path}: {e.strerror or e}") from e
    return s


# --- the daemon's side -----------------------------------------------------------------------


def push_state(path: str, data: bytes, fd: int, timeout: float = EXCHANGE_TIMEOUT) -> None:
    """Save: hand ``data`` and ``fd`` to the supervisor listening at ``path``."""
    s = _connect(path, timeout)
    try:
        _send(s, data, fd)
        s.shutdown(socket.SHUT_WR)
    except OSError as e:
        raise SupervisorError(f"supervisor {path}: sending state: {e}") from e
    finally:
        s.close()


def fetch_state(path: str, timeout: float = EXCHANGE_TIMEOUT) -> Tuple[bytes, int]:
    """Restore: receive the stored state and its fd from the supervisor at ``path``."""
    s = _connect(path, timeout)
    try:
        return _receive(s, RESTORE_BUF)
    except socket.timeout as e:
        raise SupervisorError(f"supervisor {path}: no state within {timeout:.0f}s") from e
    except OSError as e:
        raise SupervisorError(f"supervisor {path}: receiving state: {e}") from e
    finally:
        s.close()


# --- the supervisor --------------------------------------------------------------------------


class Supervisor:
    """Listens at ``path``, keeps the latest state a daemon sent, and serves it to the next
    daemon that connects after ``arm_restore``. Usable in-process (the daemon manager, the
    ``upgrade`` command, tests); ``close`` releases the socket and the kept fd."""

    def __init__(self, path: str):
        self.path = path
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._cond = threading.Condition()
        self._state: Optional[Tuple[bytes, int]] = None
        self._generation = 0
        self._armed: Optional[threading.Event] = None
        self._closed = False
        self._pushers: Set[int] = set()  # pids that have sent us a state

    def start(self) -> Supervisor:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if os.path.lexists(self.path):
            os.unlink(self.path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.path)
        os.chmod(self.path, 0o600)
        s.listen(8)
        s.settimeout(0.2)  # to notice close()
        self._sock = s
        self._thread = threading.Thread(
            target=self._serve, name=f"supervisor:{os.path.basename(self.path)}", daemon=True
        )
        self._thread.start()
        return self

    def __enter__(self) -> Supervisor:
        return self.start() if self._sock is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def generation(self) -> int:
        """How many states have been received; grows by one with each."""
        return self._generation

    def state(self) -> Optional[Tuple[bytes, int]]:
        """The latest (bytes, fd); the fd stays owned by the supervisor."""
        with self._cond:
            return self._state

    def wait_for_state(self, after: int, timeout: float = EXCHANGE_TIMEOUT) -> bool:
        """Wait until a state newer than generation ``after`` has arrived."""
        with self._cond:
            return (
                self._cond.wait_for(lambda: self._generation > after or self._closed, timeout)
                and self._generation > after
            )

    def arm_restore(self) -> threading.Event:
        """Serve the kept state to the next connection (one only); the event is set once it
        has been sent."""
        with self._cond:
            if self._state is None:
                raise SupervisorError(f"supervisor {self.path}: no state to serve")
            self._armed = threading.Event()
            return self._armed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if os.path.lexists(self.path):
                os.unlink(self.path)
        with self._cond:
            if self._state is not None:
                os.close(self._state[1])
                self._state = None

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(EXCHANGE_TIMEOUT)
                try:
                    self._exchange(conn)
                except (OSError, SupervisorError) as e:
                    log.event("supervisor_exchange_failed", level=logging.WARNING, path=self.path, error=str(e))

    def _is_push(self, conn: socket.socket) -> bool:
        """Whether a connection brings a state rather than asks for one. The protocol has no
        header, so: a process that pushed before (the running daemon refreshing its state)
        pushes again, and so does a peer whose data is already waiting. A successor is a new
        process that sends nothing."""
        if peer_pid(conn) in self._pushers:
            return True
        return bool(select.select([conn], [], [], 0)[0])

    def _exchange(self, conn: socket.socket) -> None:
        with self._cond:
            armed, state = self._armed, self._state
        if armed is not None and state is not None and not self._is_push(conn):
            with self._cond:
                self._armed = None
            started = time.monotonic()
            _send(conn, *state)
            conn.shutdown(socket.SHUT_WR)
            armed.set()
            log.event(
                "supervisor_state_served",
                path=self.path,
                bytes=len(state[0]),
                ms=round((time.monotonic() - started) * 1000, 2),
            )
            return
        pid = peer_pid(conn)
        data, fd = _receive(conn, RECV_CHUNK)
        self._pushers.add(pid)
        with self._cond:
            if self._state is not None:
                os.close(self._state[1])
            self._state = (data, fd)
            self._generation += 1
            self._cond.notify_all()
        log.event("supervisor_state_received", path=self.path, bytes=len(data), generation=self._generation)
