"""The Python FUSE shim (`nydus_hybrid.mounts.fuse_shim`, mfusepy over libfuse): the round-trip tree
mounted by a `python -c` subprocess and compared with its source (content, stat data,
symlinks, xattrs of every namespace, hard links), read-only behaviour, and a corrupted chunk
that fails only its own file with EIO."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import time
from typing import Set

import pytest

from nydus_hybrid import treecmp
from tests.helpers.mounts import blobs_with_damaged_chunk, is_mounted, read_concurrently, sha256_file

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0, reason="needs /dev/fuse and root")

mfusepy = pytest.importorskip("mfusepy", reason="the shim needs mfusepy (and libfuse)")

from nydus_hybrid.mounts import fuse_shim as shim  # noqa: E402

MiB = 1 << 20

# What the subprocess runs: mount in the foreground until unmounted.
MOUNT_SCRIPT = """
import sys
from nydus_hybrid import Image
from nydus_hybrid.mounts.fuse_shim import mount
mount(Image.open(sys.argv[1], sys.argv[2]), sys.argv[3])
"""


class ShimMount:
    """`nydus_hybrid.mounts.fuse_shim.mount` in a subprocess; up once the mount table shows it."""

    def __init__(self, mnt, bootstrap, blob_dir, timeout=15.0):
        os.makedirs(mnt, exist_ok=True)
        self.mnt = os.path.realpath(mnt)
        self.log = open(os.path.join(os.path.dirname(self.mnt), os.path.basename(self.mnt) + ".log"), "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MOUNT_SCRIPT, os.path.abspath(bootstrap), os.path.abspath(blob_dir), self.mnt],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        try:
            while not is_mounted(self.mnt):
                if self.proc.poll() is not None:
                    pytest.fail(f"the shim exited with {self.proc.returncode} before mounting:\n{self.output()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the shim did not mount within {timeout} s:\n{self.output()}")
                time.sleep(0.02)
        except BaseException:
            self.cleanup()
            raise

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def path(self, rel: str) -> str:
        return os.path.join(self.mnt, rel.lstrip("/"))

    def unmount(self) -> int:
        """Unmount as a user would; the server must then exit by itself, with status 0."""
        tool = (
            ["fusermount3", "-u"]
            if shutil.which("fusermount3")
            else ["fusermount", "-u"]
            if shutil.which("fusermount")
            else ["umount"]
        )
        subprocess.run([*tool, self.mnt], check=True)
        return self.proc.wait(timeout=15)

    def cleanup(self) -> None:
        if self.proc.poll() is None and is_mounted(self.mnt):
            subprocess.run(["umount", self.mnt], check=False)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if is_mounted(self.mnt):  # a dead server leaves the mount behind (ENOTCONN)
            subprocess.run(["umount", "-l", self.mnt], check=False)
        self.log.close()


@pytest.fixture(scope="module")
def served(built, tmp_path_factory):
    m = ShimMount(tmp_path_factory.mktemp("shim") / "mnt", built.bootstrap, built.blob_dir)
    try:
        yield m
    finally:
        m.cleanup()


def _summary(differences, limit=25) -> str:
    lines = [d if len(d) < 300 else d[:140] + " ... " + d[-140:] for d in differences[:limit]]
    return f"{len(differences)} differences:\n" + "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the round-trip tree through the mount
# --------------------------------------------------------------------------------------------


def test_tree_matches_the_source(source_tree, served):
    """treecmp: type, mode, uid, gid, size, sha256 of every regular file, mtime in ns, rdev,
    symlink targets, xattrs (all namespaces: we are root) and hard-link groups."""
    diff = treecmp.compare(source_tree.root, served.mnt)
    assert diff.ok, _summary(diff.differences)
    assert diff.entries == source_tree.entries
    assert served.proc.poll() is None


def test_xattr_namespaces_visible(source_tree, served):
    """security.capability and trusted.* pass through the kernel's FUSE xattr handlers."""
    for rel, attrs in source_tree.xattrs.items():
        p = served.path(rel)
        assert sorted(os.listxattr(p, follow_symlinks=False)) == sorted(attrs), rel
        for name, value in attrs.items():
            assert os.getxattr(p, name, follow_symlinks=False) == value, (rel, name)
    cap = served.path("/xattr/cap")
    assert os.getxattr(cap, "security.capability") == source_tree.xattrs["/xattr/cap"]["security.capability"]
    assert os.getxattr(served.path("/xattr/file"), "trusted.bin") == bytes(range(256))
    assert os.getxattr(served.path("/xattr/link"), "trusted.link_attr", follow_symlinks=False) == b"on a symlink"
    with pytest.raises(OSError) as e:
        os.getxattr(served.path("/xattr/file"), "user.absent")
    assert e.value.errno == errno.ENODATA
    assert os.listxattr(served.path("/files/hello.txt")) == []


def test_stat_data_and_inode_numbers(source_tree, served, image):
    for rel in (
        "/",
        "/files/hello.txt",
        "/files/mode_everything",
        "/dirs/sticky",
        "/links/rel",
        "/special/big_minor",
        "/special/blk_big",
        "/special/fifo",
        "/special/sock",
        "/xattr/link",
        source_tree.deep_file,
    ):
        st, src, im = os.lstat(served.path(rel)), os.lstat(source_tree.root + rel), image.stat(rel)
        where = rel + ": "
        assert st.st_ino == im.st_ino, where + "inode number is the image's"
        assert st.st_mode == src.st_mode, where + "mode"
        assert (st.st_uid, st.st_gid) == (src.st_uid, src.st_gid), where + "owner"
        assert st.st_nlink == im.st_nlink, where + "nlink"
        if rel != "/":  # the builder zeroes the root's mtime
            assert st.st_mtime_ns == src.st_mtime_ns, where + "mtime"
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            assert st.st_rdev == src.st_rdev, where + "rdev"
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            assert st.st_size == src.st_size, where + "size"
    assert os.lstat(served.mnt).st_mtime_ns == 0
    # devices with minors above 255 and the largest major/minor the kernel encodes
    for rel, (kind, major, minor) in source_tree.devices.items():
        st = os.lstat(served.path(rel))
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor), rel
        assert (stat.S_ISCHR if kind == "c" else stat.S_ISBLK)(st.st_mode), rel
    # far-future and zero mtimes
    assert os.lstat(served.path("/files/empty")).st_mtime_ns == 4_102_444_800_123_456_789
    assert os.lstat(served.path("/files/one_byte")).st_mtime_ns == 0


def test_hard_links_share_inodes(source_tree, served):
    seen: Set[int] = set()
    for group in source_tree.hardlink_groups:
        inos = {os.lstat(served.path(p)).st_ino for p in group}
        assert len(inos) == 1, group
        assert os.lstat(served.path(group[0])).st_nlink == len(group), group
        assert not inos & seen, "two hard-link groups share an inode number"
        seen |= inos
    # readdir reports the same inode numbers as stat
    with os.scandir(served.path("/hard")) as it:
        for e in it:
            assert e.inode() == os.lstat(e.path).st_ino, e.name


def test_symlinks_and_readdir(source_tree, served):
    for rel, target in source_tree.symlinks.items():
        assert os.readlink(served.path(rel)) == target, rel
    assert len(os.readlink(served.path("/links/long_target"))) == 4001
    # names that are not UTF-8 come through as raw bytes
    names = os.listdir(os.fsencode(served.path("/names")))
    assert b"latin1_\xe9\xff" in names
    assert sorted(names) == sorted(os.listdir(os.fsencode(source_tree.root + "/names")))
    assert os.listdir(served.path("/dirs/empty")) == []
    assert len(os.listdir(served.path("/small/d000"))) == min(250, source_tree.small_files)


def test_concurrent_readers(source_tree, served):
    """The shim serves requests from several libfuse threads at once."""
    rels = [
        f"/{d}/{n}"
        for d in ("files", "dedup", "hard")
        for n in sorted(os.listdir(source_tree.root + "/" + d))
        if os.path.isfile(source_tree.root + f"/{d}/{n}")
    ]
    expected = {rel: sha256_file(source_tree.root + rel) for rel in rels}
    errors_seen = read_concurrently(served.mnt, expected, readers=6)
    assert not errors_seen, errors_seen[:5]


def test_reads_at_odd_offsets(source_tree, served):
    for rel in ("/files/multi_random", "/files/sparse", "/hard/trio_2"):
        size = os.path.getsize(source_tree.root + rel)
        with open(served.path(rel), "rb") as f, open(source_tree.root + rel, "rb") as g:
            for off, n in ((0, 1), (MiB - 3, 2 * MiB + 6), (size - 5, 100), (size + 10, 10), (7, size)):
                f.seek(off)
                g.seek(off)
                assert f.read(n) == g.read(n), (rel, off, n)
        # os.pread bypasses Python's buffering
        fd = os.open(served.path(rel), os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, MiB + 1) == _pread(source_tree.root + rel, 4096, MiB + 1)
        finally:
            os.close(fd)


def _pread(path, n, off):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def test_read_only_and_errors(served, image):
    with pytest.raises(OSError) as e:
        open(served.path("/files/hello.txt"), "r+b")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        open(served.path("/files/new"), "wb")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        os.mkdir(served.path("/dirs/new"))
    assert e.value.errno == errno.EROFS
    assert not os.access(served.path("/files/hello.txt"), os.W_OK)
    assert os.access(served.path("/files/hello.txt"), os.R_OK)
    with pytest.raises(FileNotFoundError):
        os.lstat(served.path("/no/such/file"))
    with pytest.raises(NotADirectoryError):
        os.lstat(served.path("/files/hello.txt/x"))
    # mount() defaults: read-only, the kernel checks the image's modes, other users may enter
    line = next(ln.split() for ln in open("/proc/self/mountinfo") if ln.split()[4] == served.mnt)
    sep = line.index("-")
    assert "ro" in line[5].split(",")
    assert (line[sep + 1], line[sep + 2]) == ("fuse.nydus-hybrid-py", "rafs")
    assert {"default_permissions", "allow_other"} <= set(line[sep + 3].split(","))
    st = os.statvfs(served.mnt)
    assert st.f_flag & os.ST_RDONLY
    assert st.f_bsize == 4096 and st.f_namemax == 255
    assert st.f_files == image.inspect()["superblock"]["inodes"]
    assert st.f_bfree == 0 and st.f_blocks > 0


# --------------------------------------------------------------------------------------------
# a corrupted chunk, then a clean unmount
# --------------------------------------------------------------------------------------------


def test_corrupted_chunk_is_eio_for_that_file_only(built, tmp_path):
    image = built.open()
    victim = "/files/multi_random"
    blobs = blobs_with_damaged_chunk(built, tmp_path, victim, MiB)  # its second chunk
    m = ShimMount(tmp_path / "mnt", built.bootstrap, blobs)
    try:
        with open(m.path(victim), "rb", buffering=0) as f:
            assert f.read(4096) == image.read(victim, 0, 4096)  # the first chunk is fine
            f.seek(MiB + 5)
            with pytest.raises(OSError) as e:
                f.read(100)
            assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            with open(m.path(victim), "rb") as f:
                f.read()
        assert e.value.errno == errno.EIO
        # everything else still reads, including the file's neighbours in the blob
        for rel in ("/files/hello.txt", "/files/multi_mixed", "/files/chunk_plus_one", "/hard/trio_1"):
            with open(m.path(rel), "rb") as f:
                assert f.read() == image.read(rel), rel
        assert m.proc.poll() is None, "the server died"
        assert m.unmount() == 0
        assert not is_mounted(m.mnt)
    finally:
        m.cleanup()


# --------------------------------------------------------------------------------------------
# the operations without a mount, and the import guard
# --------------------------------------------------------------------------------------------


def test_operations_map_errors(image):
    ops = shim.RafsOperations(image)
    with pytest.raises(mfusepy.FuseOSError) as e:
        ops.getattr("/no/such/path")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(mfusepy.FuseOSError) as e:
        ops.getxattr("/xattr/file", "user.absent")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(mfusepy.FuseOSError) as e:
        ops.open("/files/hello.txt", os.O_WRONLY)
    assert e.value.errno == errno.EROFS
    with pytest.raises(mfusepy.FuseOSError) as e:
        ops.access("/files/hello.txt", os.W_OK)
    assert e.value.errno == errno.EROFS
    with pytest.raises(mfusepy.FuseOSError) as e:
        ops.readlink("/files/hello.txt")
    assert e.value.errno == errno.EINVAL
    a = ops.getattr("/files/hello.txt")
    st = image.stat("/files/hello.txt")
    assert (a["st_ino"], a["st_size"], a["st_mtime"]) == (st.st_ino, 13, st.st_mtime_ns)
    assert ops.read("/files/hello.txt", 5, 7, 0) == b"world"
    names = [n for n, _, _ in ops.readdir("/links", 0)]
    assert names[:2] == [".", ".."] and sorted(names[2:]) == sorted(image.listdir("/links"))
    assert "trusted.bin" in ops.listxattr("/xattr/file")


def test_import_without_mfusepy_is_a_clear_error():
    code = "import sys; sys.modules['mfusepy'] = None; import nydus_hybrid.mounts.fuse_shim"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0
    assert "ImportError: nydus_hybrid.mounts.fuse_shim needs the 'mfusepy' package" in r.stderr
