"""The handover state format (nydus_hybrid.lifecycle.handover) and the supervisor's wire
protocol (nydus_hybrid.lifecycle.supervisor), without a daemon: real unix sockets, real fds."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any, Dict, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nydus_hybrid.lifecycle import handover
from nydus_hybrid.lifecycle import supervisor as nsup
from nydus_hybrid.lifecycle.errors import StateError, SupervisorError
from nydus_hybrid.lifecycle.supervisor import Supervisor


def doc(n_mounts: int = 2) -> Dict[str, Any]:
    return {
        "daemon": {"id": "d1", "mountpoint": "/mnt/x", "threads": 4, "failover_policy": "resend"},
        "fuse": {"vfs_state": "AAEC", "conn_id": 42},
        "mounts": [
            {"mountpoint": f"/s{i}", "source": "/boot", "config": "{}", "index": i + 1, "prefetch_files": None}
            for i in range(n_mounts)
        ],
        "runtime_config": {"/s0:registry_auth": "YTpi"},
        "blob_caches": [],
    }


def test_round_trip():
    d = doc()
    assert handover.decode(handover.encode(d)) == d


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda b: b[:-1], "truncated or padded"),
        (lambda b: b + b"x", "truncated or padded"),
        (lambda b: b[:10], "shorter than its header"),
        (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
        (lambda b: b[:8] + (2).to_bytes(4, "little") + b[12:], "newer than this daemon"),
        (lambda b: b[:8] + (0).to_bytes(4, "little") + b[12:], "not valid"),
        (lambda b: b[:30] + bytes([b[30] ^ 1]) + b[31:], "checksum"),
    ],
)
def test_damaged_states_are_refused_clearly(mutate, expect):
    with pytest.raises(StateError, match=expect):
        handover.decode(mutate(handover.encode(doc())))


@pytest.mark.parametrize(
    "field, value",
    [
        (("daemon", "failover_policy"), "sometimes"),
        (("daemon", "threads"), "4"),
        (("fuse", "vfs_state"), "not base64!"),
        (("fuse", "conn_id"), "42"),
        (("runtime_config",), []),
    ],
)
def test_well_formed_but_wrong_fields_are_refused(field, value):
    d = doc()
    node = d
    for k in field[:-1]:
        node = node[k]
    node[field[-1]] = value
    with pytest.raises(StateError, match="state corrupt"):
        handover.decode(handover.encode(d))


@pytest.mark.parametrize("index", [-1, 256, "1"])
def test_mount_index_must_fit_a_vfs_index(index):
    d = doc()
    d["mounts"][0]["index"] = index
    with pytest.raises(StateError, match="mount entry malformed"):
        handover.decode(handover.encode(d))


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_decode(data):
    try:
        handover.decode(data)
    except StateError as e:
        assert e.status == 500 and "Upgrade(Restore(" in e.message


@settings(max_examples=200)
@given(st.data())
def test_any_single_corruption_is_caught(data):
    good = bytearray(handover.encode(doc(3)))
    pos = data.draw(st.integers(0, len(good) - 1))
    good[pos] ^= data.draw(st.integers(1, 255))
    # a flipped byte anywhere (header, payload or digest) is refused, never half-taken
    with pytest.raises(StateError):
        handover.decode(bytes(good))


# --- wire protocol ---------------------------------------------------------------------------


def _fd_identity(fd: int) -> Tuple[Any, ...]:
    s = os.fstat(fd)
    return s.st_dev, s.st_ino


def _fetch_in_child(path: str, expect: bytes, write: bytes) -> int:
    """Fetch the state in a forked process; it writes ``write`` through the received fd.
    Returns its exit status (0: the bytes matched)."""
    child = os.fork()
    if child == 0:
        try:
            data, fd = nsup.fetch_state(path, timeout=5)
            if write:
                os.write(fd, write)
            os._exit(0 if data == expect else 1)
        except BaseException:
            os._exit(2)
    return os.waitpid(child, 0)[1]


def test_push_keep_and_serve(tmp_path):
    r, w = os.pipe()
    big = os.urandom(300_000)  # larger than one recvmsg: the rest follows as plain data
    with Supervisor(str(tmp_path / "s.sock")) as sup:
        nsup.push_state(sup.path, big, w)
        assert sup.wait_for_state(0, 5)
        state = sup.state()
        assert state is not None
        data, kept = state
        assert data == big and _fd_identity(kept) == _fd_identity(w)
        served = sup.arm_restore()
        # the successor is another process (a pusher's own pid is taken for a push)
        assert _fetch_in_child(sup.path, big, b"through the passed fd") == 0
        assert served.wait(5)
        assert os.read(r, 100) == b"through the passed fd"
        # only the latest state is kept
        nsup.push_state(sup.path, b"second", r)
        assert sup.wait_for_state(1, 5)
        state = sup.state()
        assert state is not None and state[0] == b"second"
    os.close(r)
    os.close(w)


def test_a_pusher_is_not_served_while_a_restore_is_armed(tmp_path):
    """The running daemon refreshing its state during an upgrade must not be mistaken for
    the successor asking for it."""
    r, w = os.pipe()
    with Supervisor(str(tmp_path / "s.sock")) as sup:
        nsup.push_state(sup.path, b"v1", w)
        assert sup.wait_for_state(0, 5)
        served = sup.arm_restore()
        nsup.push_state(sup.path, b"v2", w)  # same process pushes again: kept, not served
        assert sup.wait_for_state(1, 5) and not served.is_set()
        assert _fetch_in_child(sup.path, b"v2", b"") == 0  # a different process asks: served v2
        assert served.wait(5)
    os.close(r)
    os.close(w)


def test_no_fd_is_an_error(tmp_path):
    with Supervisor(str(tmp_path / "s.sock")) as sup:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sup.path)
        s.sendall(b"state without an fd")
        s.close()
        assert not sup.wait_for_state(0, 1), "a state without its fd is not kept"
        with pytest.raises(SupervisorError, match="no state to serve"):
            sup.arm_restore()


def test_nothing_listening(tmp_path):
    with pytest.raises(SupervisorError, match="supervisor"):
        nsup.push_state(str(tmp_path / "none.sock"), b"x", 0)
    with pytest.raises(SupervisorError, match="supervisor"):
        nsup.fetch_state(str(tmp_path / "none.sock"))


def test_snapshotter_style_one_shot_listener(tmp_path):
    """nydus-snapshotter's supervisor listens for one exchange at a time; our daemon side
    speaks to it unchanged (and our supervisor to its daemons)."""
    path = str(tmp_path / "one.sock")
    r, w = os.pipe()
    got = {}
    listening = threading.Event()

    def one_exchange_receive():
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(path)
        ls.listen(1)
        listening.set()
        conn, _ = ls.accept()
        got["state"] = nsup._receive(conn, nsup.RECV_CHUNK)
        conn.close()
        ls.close()
        os.unlink(path)

    t = threading.Thread(target=one_exchange_receive)
    t.start()
    assert listening.wait(5)
    nsup.push_state(path, b"hello", w)
    t.join(5)
    data, fd = got["state"]
    assert data == b"hello" and _fd_identity(fd) == _fd_identity(w)
    for x in (fd, r, w):
        os.close(x)
