"""The Rust FUSE server (`nydus-hybrid mount`, `nydus_hybrid.mounts.fuse`): the round-trip tree
through a real /dev/fuse mount, concurrent readers, a corrupted chunk, shared mode with
images added and removed at runtime, SIGTERM and kill -9, and handing the live session to
another process without remounting."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Union

import pytest

import nydus_hybrid
from nydus_hybrid import treecmp
from nydus_hybrid.mounts.fuse import Mount
from tests.helpers.images import build_into
from tests.helpers.mounts import blobs_with_damaged_chunk, is_mounted, read_concurrently, sha256_file

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0, reason="needs /dev/fuse and root")


class CliMount:
    """`nydus-hybrid mount` in a subprocess, up once it prints its JSON line."""

    def __init__(self, mnt, *args):
        try:
            os.makedirs(mnt, exist_ok=True)
        except OSError:  # a dead mount (ENOTCONN) is there: the server must cope with it
            pass
        self.mnt = str(mnt)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nydus_hybrid", "mount", *map(str, args), self.mnt],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        assert line, f"mount failed: {self.proc.stderr.read()}"
        assert json.loads(line)["mounted"] == os.path.abspath(self.mnt)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if is_mounted(self.mnt):
            subprocess.run(["umount", "-l", self.mnt], check=False)


@pytest.fixture(scope="module")
def served(built, tmp_path_factory):
    m = CliMount(tmp_path_factory.mktemp("fuse") / "mnt", "-B", built.bootstrap, "-D", built.blob_dir, "--threads", "4")
    yield m
    m.cleanup()


def test_tree_matches_the_source(source_tree, served):
    diff = treecmp.compare(source_tree.root, served.mnt)
    shown = [d[:300] for d in diff.differences[:20]]
    assert diff.ok, f"{len(diff.differences)} differences:\n" + "\n".join(shown)
    assert diff.entries == source_tree.entries
    # xattrs as a program sees them, through the kernel's FUSE getxattr/listxattr
    src_cap = os.path.join(source_tree.root, "files/hello.txt")
    for name in os.listxattr(src_cap, follow_symlinks=False):
        assert os.getxattr(os.path.join(served.mnt, "files/hello.txt"), name, follow_symlinks=False) == os.getxattr(
            src_cap, name, follow_symlinks=False
        )


def test_hard_links_share_stable_inode_numbers(served):
    first = {
        p: os.lstat(os.path.join(served.mnt, "hard", p)).st_ino for p in os.listdir(os.path.join(served.mnt, "hard"))
    }
    again = {p: os.lstat(os.path.join(served.mnt, "hard", p)).st_ino for p in first}
    assert first == again
    trio = {first[p] for p in first if p.startswith("trio_")}
    assert len(trio) == 1 and os.lstat(os.path.join(served.mnt, "hard", "trio_1")).st_nlink == 3


def test_mount_options_allow_1_mib_reads(served):
    with open("/proc/self/mountinfo") as f:
        line = next(line for line in f if line.split()[4] == os.path.realpath(served.mnt))
    opts = dict(o.partition("=")[::2] for o in line.split(" - ")[1].split()[2].split(","))
    assert int(opts["max_read"]) >= 1 << 20
    assert "ro" in line.split()[5].split(",")


def test_statfs_and_read_only(served):
    st = os.statvfs(served.mnt)
    assert st.f_bsize == 4096 and st.f_files > 0 and st.f_flag & os.ST_RDONLY
    with pytest.raises(OSError) as e:
        open(os.path.join(served.mnt, "files/hello.txt"), "r+b")
    assert e.value.errno == errno.EROFS


def test_eight_readers_three_times(source_tree, served):
    expected = {}
    for root, _, files in os.walk(source_tree.root):
        for f in files:
            p = os.path.join(root, f)
            if os.path.isfile(p) and not os.path.islink(p):
                expected[os.path.relpath(p, source_tree.root)] = sha256_file(p)
    problems = read_concurrently(served.mnt, expected, readers=8, rounds=3)
    assert not problems, problems[:5]


def test_corrupted_chunk_is_eio_for_that_file_only(built, tmp_path):
    image = built.open()
    victim = "/files/multi_random"
    blobs = blobs_with_damaged_chunk(built, tmp_path, victim, 1 << 20)  # its second chunk
    m = CliMount(tmp_path / "mnt", "-B", built.bootstrap, "-D", blobs)
    try:
        with open(os.path.join(m.mnt, victim.lstrip("/")), "rb") as f:
            assert len(f.read(4096)) == 4096  # the first chunk is fine
            f.seek((1 << 20) + 5)
            with pytest.raises(OSError) as e:
                f.read(100)
            assert e.value.errno == errno.EIO
        assert open(os.path.join(m.mnt, "files/hello.txt"), "rb").read() == image.read("/files/hello.txt")
        assert m.proc.poll() is None, "the server died"
    finally:
        m.cleanup()


def test_sigterm_unmounts_and_kill_9_is_recovered(built, tmp_path):
    mnt = tmp_path / "mnt"
    m = CliMount(mnt, "-B", built.bootstrap, "-D", built.blob_dir)
    try:
        assert is_mounted(mnt)
        assert m.terminate() == 0
        assert not is_mounted(mnt)
        # kill -9: the mount is left dead (ENOTCONN); a new server mounts over it anyway
        m = CliMount(mnt, "-B", built.bootstrap, "-D", built.blob_dir)
        m.kill()
        with pytest.raises(OSError) as e:
            os.listdir(mnt)
        assert e.value.errno == errno.ENOTCONN
        m = CliMount(mnt, "-B", built.bootstrap, "-D", built.blob_dir)
        assert open(os.path.join(mnt, "files/hello.txt"), "rb").read() == built.open().read("/files/hello.txt")
        assert m.terminate() == 0 and not is_mounted(mnt)
    finally:
        m.cleanup()


@pytest.fixture(scope="module")
def three_images(tmp_path_factory):
    out = []
    for i in range(3):
        src = tmp_path_factory.mktemp(f"shared{i}") / "src"
        src.mkdir()
        (src / "id").write_text(f"image {i}\n")
        (src / "big").write_bytes(os.urandom(3 << 20))
        out.append((src, build_into(src, src.parent / "img")))
    return out


def test_shared_mode_add_remove_while_reading(three_images, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount.create(mnt)
    try:
        for i, (_, b) in enumerate(three_images):
            m.attach(f"/img{i}", b.open())
        m.start(4)
        assert sorted(os.listdir(mnt)) == ["img0", "img1", "img2"]
        for i, (_src, _) in enumerate(three_images):
            assert (mnt / f"img{i}" / "id").read_text() == f"image {i}\n"
        big0 = (three_images[0][0] / "big").read_bytes()
        stop = threading.Event()
        errors: List[Union[str, OSError]] = []

        def keep_reading():
            while not stop.is_set():
                try:
                    if (mnt / "img0" / "big").read_bytes() != big0:
                        errors.append("wrong bytes")
                except OSError as e:
                    errors.append(e)

        t = threading.Thread(target=keep_reading)
        t.start()
        time.sleep(0.2)
        m.detach("/img1")
        assert sorted(os.listdir(mnt)) == ["img0", "img2"]
        assert not (mnt / "img1" / "id").exists()
        m.attach("/img1", three_images[1][1].open())
        assert (mnt / "img1" / "id").read_text() == "image 1\n"
        time.sleep(0.2)
        stop.set()
        t.join()
        assert not errors, errors[:3]
        with pytest.raises(nydus_hybrid.errors.NotFoundError):
            m.detach("/never-attached")
        # FUSE op counters per instance (FsIoStats): img0 was read, img2 only looked up
        read0, read2 = m.fs_metrics("/img0"), m.fs_metrics("/img2")
        assert read0["id"] == "/img0" and read0["fop_hits"][4] > 0 and read0["data_read"] >= len(big0)
        assert read2["fop_hits"][4] >= 1 and read2["data_read"] < read0["data_read"]
        with pytest.raises(OSError):
            open(mnt / "img2" / "missing")
        assert m.fs_metrics("/img2")["fop_errors"][9] >= 1  # the failed lookup
    finally:
        m.stop(umount=True)
    assert not is_mounted(mnt)


HANDOVER = """
import json, os, signal, sys
from nydus_hybrid import Image
from nydus_hybrid.mounts.fuse import Mount
mnt, fd, state_file, boot, blobs, index = sys.argv[1:7]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # taken by sigwait below
m = Mount.resume(mnt, int(fd), open(state_file, "rb").read())
m.attach("/", Image.open(boot, blobs), index=int(index))
m.start(2)
print("ready", flush=True)
signal.sigwait([signal.SIGTERM])
m.stop(umount=True)
"""


def test_session_fd_handed_to_a_new_process(built, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    expected = built.open().read("/files/hello.txt")
    m = Mount.create(mnt)
    child = None
    try:
        index = m.attach("/", built.open())
        m.start(2)
        assert (mnt / "files/hello.txt").read_bytes() == expected  # INIT done, inodes known
        ino = os.lstat(mnt / "files/hello.txt").st_ino
        state = tmp_path / "state"
        state.write_bytes(m.save_state())
        fd = m.fuse_fd()
        assert fd is not None
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HANDOVER,
                str(mnt),
                str(fd),
                str(state),
                str(built.bootstrap),
                str(built.blob_dir),
                str(index),
            ],
            pass_fds=[fd],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        m.stop(umount=False)  # the old server is gone; the mount is not
        assert is_mounted(mnt)
        assert (mnt / "files/hello.txt").read_bytes() == expected
        assert os.lstat(mnt / "files/hello.txt").st_ino == ino
        assert len(os.listdir(mnt / "files")) > 3
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 0
        assert not is_mounted(mnt)
    finally:
        if child and child.poll() is None:
            child.kill()
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_inflight_shows_a_read_waiting_on_a_stalled_backend(built, tmp_path):
    """A backend that accepts and never answers: the read shows up in flight until the
    backend timeout turns it into EIO; the server keeps serving meanwhile."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def accept_all() -> None:
        for _ in range(16):
            accepted.append(listener.accept())

    threading.Thread(target=accept_all, daemon=True).start()
    cfg = {
        "version": 2,
        "backend": {
            "type": "http-proxy",
            "http-proxy": {"addr": f"http://127.0.0.1:{listener.getsockname()[1]}", "timeout": 3, "connect_timeout": 2},
        },
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(tmp_path / "cache")}},
    }
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount.create(mnt)
    try:
        m.attach("/", nydus_hybrid.Image.open(built.bootstrap, config=cfg))
        m.start(2)
        outcome: List[Union[str, int, None]] = []  # "read", or the read's errno

        def read():
            try:
                (mnt / "files/hello.txt").read_bytes()
                outcome.append("read")
            except OSError as e:
                outcome.append(e.errno)

        t = threading.Thread(target=read)
        t.start()
        seen: List[Dict[str, Any]] = []
        deadline = time.monotonic() + 2.5
        while not seen and time.monotonic() < deadline:
            seen = [op for op in m.inflight("/") if op["opcode"] == 15]
            time.sleep(0.05)
        assert seen and seen[0]["timestamp_secs"] <= time.time(), m.inflight("/")
        assert os.listdir(mnt / "files")  # other requests are still answered
        t.join(timeout=30)
        assert outcome == [errno.EIO]
        assert m.inflight("/") == []
    finally:
        m.stop(umount=True)
        listener.close()


@pytest.mark.parametrize("keep_cache", [True, False])
def test_opens_reach_the_daemon_only_without_keep_cache(built, tmp_path, keep_cache):
    """Zero-message opens and opendirs by default (the kernel keeps the page cache and sends
    no OPEN, OPENDIR or RELEASE); ``keep_cache=False`` needs its opens, so they come."""
    from nydus_hybrid.mounts.fuse import mount_image

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = mount_image(mnt, built.bootstrap, built.blob_dir, keep_cache=keep_cache)
    try:
        for _ in range(3):
            assert (mnt / "files/hello.txt").read_bytes() == b"hello, world\n"
            assert "hello.txt" in os.listdir(mnt / "files")
        hits = m.fs_metrics("/")["fop_hits"]
        opens, opendirs = hits[2], hits[8]  # nydusd's fop order: getattr, readlink, open, ...
        if keep_cache:
            assert (opens, opendirs) == (0, 0)
        else:
            assert opens >= 3 and opendirs >= 3
    finally:
        m.stop(umount=True)
