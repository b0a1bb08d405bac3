"""The cachefiles simulator (nydus_hybrid.sim.cachefiles) against a small test peer that
speaks the device seam: what the kernel would do on EBUSY, an unknown cookie, a READ that
is never completed, a daemon that goes away, a restore, and a cull of an object in use.
The daemon side (Rust) is tested against the simulator in tests/compat/test_singleton.py."""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Tuple, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nydus_hybrid
from nydus_hybrid.mounts import erofs, fscache
from nydus_hybrid.sim.cachefiles import HEADER, device_tags
from tests.helpers.cachefiles import DIO_BLOCK, write_object

needs_erofs = pytest.mark.skipif(
    os.geteuid() != 0 or not erofs.erofs_available(), reason="the simulator mounts file-backed EROFS: needs root"
)


class Peer:
    """A minimal daemon on the seam: answers OPEN from ``sizes`` and READ from ``sources``
    (cookie -> file with the object's bytes). ``answer_reads=False`` leaves READs hanging."""

    def __init__(
        self,
        sock: str,
        cache_dir: str,
        sizes: Dict[str, int],
        sources: Dict[str, Union[str, os.PathLike[str]]],
        answer_reads: bool = True,
        start: bool = True,
    ):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.s.connect(sock)
        self.hello = self.s.recv(16)
        self.sizes, self.sources, self.answer_reads = sizes, sources, answer_reads
        self.objects: Dict[int, Tuple[str, int]] = {}  # object id -> (cookie, fd)
        self.seen: List[Tuple[Any, ...]] = []  # ("OPEN", cookie), ("READ", offset, length), ("CLOSE", object id)
        if self.hello == b"ok":
            self.s.send(f"dir {cache_dir}".encode())
            self.s.send(b"bind ondemand")
            # A write of "bind" to the kernel's device returns once the cache is bound; the
            # seam's send returns before the simulator has read it, so wait for that here.
            deadline = time.monotonic() + 10
            while not status(sock)["bound"]:
                assert time.monotonic() < deadline, "the simulator did not bind the cache"
                time.sleep(0.01)
            if start:
                self.start()

    def start(self) -> None:
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self, messages: int = -1) -> None:
        while messages != 0:
            messages -= 1
            try:
                data, anc, _, _ = self.s.recvmsg(1024, socket.CMSG_SPACE(4))
            except OSError:
                return
            if not data:
                return
            msg_id, op, _len, obj = HEADER.unpack_from(data)
            fds = [array.array("i", d[:4])[0] for lvl, t, d in anc if t == socket.SCM_RIGHTS]
            if op == 0:
                vsize, csize = struct.unpack_from("<II", data, 16)
                cookie = data[32 + vsize : 32 + vsize + csize].decode()
                self.seen.append(("OPEN", cookie))
                size = self.sizes.get(cookie, -errno.ENOENT)
                if size >= 0:
                    self.objects[obj] = (cookie, fds[0])
                else:
                    os.close(fds[0])
                self.s.send(f"copen {msg_id},{size}".encode())
            elif op == 2:
                off, length = struct.unpack_from("<QQ", data, 16)
                self.seen.append(("READ", off, length))
                if not self.answer_reads or obj not in self.objects:
                    continue
                cookie, fd = self.objects[obj]
                with open(self.sources[cookie], "rb") as f:
                    start = off - off % DIO_BLOCK
                    f.seek(start)
                    write_object(fd, f.read(off + length - start), start)
                self.s.send(f"cread {msg_id}".encode())
            else:
                self.seen.append(("CLOSE", obj))

    def send(self, cmd: str) -> None:
        self.s.send(cmd.encode())

    def close(self) -> None:
        try:
            self.s.shutdown(socket.SHUT_RDWR)  # wakes our own reader, so the fd really closes
        except OSError:
            pass
        self.s.close()


@pytest.fixture
def sim(tmp_path):
    sock = str(tmp_path / "cf.sock")
    log = open(tmp_path / "sim.log", "wb")
    p = subprocess.Popen(
        [sys.executable, "-m", "nydus_hybrid.sim.cachefiles", "--socket", sock, "--timeout", "2"],
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 20
    while not os.path.exists(sock + ".ctl"):
        assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "sim.log").read_text()
        time.sleep(0.05)
    yield sock
    p.terminate()
    p.wait(10)
    log.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim-image")
    src = base / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(3 << 20))
    (src / "small.txt").write_text("hello\n")
    nydus_hybrid.build(str(src), str(base / "boot"), str(base / "blobs"), progress=False)
    img = nydus_hybrid.Image.open(base / "boot", base / "blobs")
    img.export_flat_blob(base / "flat")  # the blob's uncompressed bytes: what its cache object holds
    return {"src": src, "boot": base / "boot", "flat": base / "flat", "blob_id": img.blob_ids[0]}


def status(sock: str) -> Dict[str, Any]:
    return fscache.sim_request(sock, {"op": "status"})


@needs_erofs
def test_an_object_whose_daemon_died_is_reopened(sim, tmp_path, image):
    """A child process answers the mount's OPENs and exits: its anon fds die with it, so the
    next READ of the blob first reopens the object, answered by the daemon left (us)."""
    sim_env(sim)
    peer = peer_for(sim, tmp_path, image, start=False)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pid = os.fork()
    if pid == 0:  # the first daemon: OPEN bootstrap, READ bootstrap, OPEN blob; then gone
        try:
            peer.loop(messages=3)
        finally:
            os._exit(0)
    try:
        fscache.mount_erofs_fscache(str(mnt), "f1")
        os.waitpid(pid, 0)
        peer.start()
        assert (mnt / "big").read_bytes() == (image["src"] / "big").read_bytes()
        assert ("OPEN", image["blob_id"]) in peer.seen, "the blob object was reopened here"
        assert status(sim)["counters"]["eio"] == 0
    finally:
        umount_all(tmp_path)
        peer.close()


def peer_for(sim, tmp_path, image, **kw) -> Peer:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    sizes = {"f1": os.path.getsize(image["boot"]), image["blob_id"]: os.path.getsize(image["flat"])}
    return Peer(sim, str(cache), sizes, {"f1": image["boot"], image["blob_id"]: image["flat"]}, **kw)


def sim_env(sim):
    os.environ[fscache.ENV] = f"sim:{sim}"


@pytest.fixture(autouse=True)
def _env():
    yield
    os.environ.pop(fscache.ENV, None)


def umount_all(tmp_path) -> None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4].startswith(str(tmp_path)):
                subprocess.run(["umount", "-l", line.split()[4]], capture_output=True)


@needs_erofs
def test_reads_fill_only_what_is_read(sim, tmp_path, image):
    sim_env(sim)
    peer = peer_for(sim, tmp_path, image)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        fscache.mount_erofs_fscache(str(mnt), "f1")
        assert ("OPEN", "f1") in peer.seen and ("OPEN", image["blob_id"]) in peer.seen
        assert (mnt / "small.txt").read_text() == "hello\n"
        with open(mnt / "big", "rb") as f:
            f.seek(2 << 20)
            assert f.read(4096) == (image["src"] / "big").read_bytes()[2 << 20 : (2 << 20) + 4096]
        reads = [r for r in peer.seen if r[0] == "READ"]
        blob_reads = sum(r[2] for r in reads) - os.path.getsize(image["boot"])
        assert 0 < blob_reads < os.path.getsize(image["flat"]), "on demand: not the whole blob"
        assert all(r[1] % 4096 == 0 for r in reads)
        assert (mnt / "big").read_bytes() == (image["src"] / "big").read_bytes()
        st = status(sim)
        assert st["counters"]["protocol_errors"] == 0 and st["counters"]["eio"] == 0
        fscache.umount_erofs_fscache(str(mnt))
        time.sleep(0.2)
        assert sum(1 for r in peer.seen if r[0] == "CLOSE") == 2
    finally:
        umount_all(tmp_path)
        peer.close()


@needs_erofs
def test_device_is_exclusive_and_unknown_cookie_fails_the_mount(sim, tmp_path, image):
    sim_env(sim)
    peer = peer_for(sim, tmp_path, image)
    try:
        assert Peer(sim, str(tmp_path), {}, {}).hello == b"EBUSY"
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        with pytest.raises(OSError) as e:
            fscache.mount_erofs_fscache(str(mnt), "nobody")
        assert e.value.errno == errno.ENOENT and not kmount_mounted(mnt)
    finally:
        peer.close()


def kmount_mounted(path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@needs_erofs
def test_unanswered_read_is_eio_and_teardown_fails_reads(sim, tmp_path, image):
    sim_env(sim)
    peer = peer_for(sim, tmp_path, image)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        fscache.mount_erofs_fscache(str(mnt), "f1")
        peer.answer_reads = False
        with pytest.raises(OSError) as e:
            (mnt / "big").read_bytes()
        assert e.value.errno == errno.EIO
        assert status(sim)["counters"]["eio"] >= 1
        peer.answer_reads = True
        peer.close()  # the last reference to the device: the cache is gone
        time.sleep(0.3)
        assert not status(sim)["bound"]
        with pytest.raises(OSError) as e:
            with open(mnt / "big", "rb") as f:
                f.seek(1 << 20)
                f.read(4096)
        assert e.value.errno == errno.EIO
        again = peer_for(sim, tmp_path, image)  # the device can be opened again
        assert again.hello == b"ok"
        again.close()
    finally:
        umount_all(tmp_path)


@needs_erofs
def test_restore_reopens_objects_and_resends_reads(sim, tmp_path, image):
    sim_env(sim)
    peer = peer_for(sim, tmp_path, image)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        fscache.mount_erofs_fscache(str(mnt), "f1")
        peer.answer_reads = False
        result = {}

        def reader():
            with open(mnt / "big", "rb") as f:
                f.seek(1 << 20)
                result["data"] = f.read(4096)

        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.5)  # the READ is pending
        opens = sum(1 for r in peer.seen if r[0] == "OPEN")
        peer.answer_reads = True
        peer.objects.clear()  # a successor has none of the old anon fds
        peer.send("restore")
        t.join(10)
        assert result["data"] == (image["src"] / "big").read_bytes()[1 << 20 : (1 << 20) + 4096]
        assert sum(1 for r in peer.seen if r[0] == "OPEN") == opens + 1, "the object was reopened"
        assert status(sim)["counters"]["restores"] == 1
    finally:
        umount_all(tmp_path)
        peer.close()


@needs_erofs
def test_cull_refuses_an_object_in_use(sim, tmp_path, image):
    sim_env(sim)
    peer = peer_for(sim, tmp_path, image)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        fscache.mount_erofs_fscache(str(mnt), "f1")
        cache = str(tmp_path / "cache")
        path = fscache.cache_file(cache, "erofs,f1", "f1")
        assert not list(fscache.cache_files(cache, "f1")), "a new object's file has no name until let go"
        fscache.umount_erofs_fscache(str(mnt))
        assert list(fscache.cache_files(cache, "f1")) == [path], "named when unmounted"
        fscache.mount_erofs_fscache(str(mnt), "f1")  # the named file is used in place
        peer.send(f"cull {path}")
        time.sleep(0.2)
        assert os.path.exists(path), "in use: not culled"
        fscache.umount_erofs_fscache(str(mnt))
        peer.send(f"cull {path}")
        time.sleep(0.2)
        assert not os.path.exists(path)
        peer.send("cull /etc/passwd")
        time.sleep(0.2)
        assert os.path.exists("/etc/passwd") and status(sim)["counters"]["protocol_errors"] == 1
    finally:
        umount_all(tmp_path)
        peer.close()


def test_cookie_dir_is_a_byte_of_a_salted_hash():
    d = fscache.cookie_dir("erofs,abc", "abc")
    assert len(d) == 3 and d[0] == "@" and int(d[1:], 16) < 256
    assert d == fscache.cookie_dir("erofs,abc", "abc")
    dirs = {fscache.cookie_dir("erofs,abc", f"c{i}") for i in range(200)}
    assert len(dirs) > 16, "cookies spread over directories (the kernel's low byte is a weak spreader)"
    # the volume's hash salts the cookie's: another volume files the same cookie elsewhere
    assert any(fscache.cookie_dir("erofs,abc", f"c{i}") != fscache.cookie_dir("erofs,xyz", f"c{i}") for i in range(20))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=6000))
def test_device_tags_never_crash_on_garbage(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("tags") / "boot"
    p.write_bytes(blob)
    try:
        tags = device_tags(str(p))
    except OSError as e:
        assert e.errno == errno.EINVAL
    else:
        assert len(tags) == len(set(tags)) and all(t and "/" not in t for t in tags)


def test_device_tags_of_a_real_bootstrap(image):
    assert device_tags(str(image["boot"])) == [image["blob_id"]]
