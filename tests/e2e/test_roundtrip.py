"""Build the generated tree, then get it back: through unpack_dir, through a tar stream, and
through the reader API. Also determinism, dedup and blob naming."""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import os
import re
import stat
import subprocess
import tarfile
from typing import Any, Dict, Tuple, Union

import pytest

import nydus_hybrid
from nydus_hybrid import errors, treecmp
from tests.helpers.images import Built, build_into

MiB = 1 << 20
COMBOS = [(c, d) for c in ("zstd", "lz4_block", "none") for d in ("blake3", "sha256")]


def _src(tree, rel: str) -> str:
    return os.path.join(tree.root, rel.lstrip("/"))


def _source_entries(root: str):
    """Every path in the tree (as '/rel', root as '/') with its lstat result."""
    out = {"/": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out["/" + os.path.relpath(p, root)] = os.lstat(p)
    return out


def _xattrs(path: str) -> Dict[str, Any]:
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}


def _summary(differences, limit=25) -> str:
    lines = [d if len(d) < 300 else d[:140] + " ... " + d[-140:] for d in differences[:limit]]
    more = len(differences) - limit
    return f"{len(differences)} differences:\n" + "\n".join(lines) + (f"\n... and {more} more" if more > 0 else "")


def _assert_same_tree(expected: str, actual: str, **kw):
    diff = treecmp.compare(expected, actual, **kw)
    assert diff.entries > 0
    assert diff.ok, _summary(diff.differences)
    return diff


# --------------------------------------------------------------------------------------------
# unpack_dir round trip, every compressor x digester
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressor,digester", COMBOS)
def test_unpack_dir_roundtrip(source_tree, tmp_path, compressor, digester):
    b = build_into(source_tree.root, tmp_path / "img", compressor=compressor, digester=digester)
    im = b.open()
    info = im.inspect()
    assert info["superblock"]["compressor"] == compressor
    assert info["superblock"]["digester"] == digester
    assert [x["compressor"] for x in info["blobs"]] == [compressor]
    assert [x["digester"] for x in info["blobs"]] == [digester]

    report = im.check()
    assert report["chunks_verified"] == b.report.chunks > 0
    assert report["bytes_verified"] > 0

    out = tmp_path / "out"
    up = im.unpack_dir(out)
    assert up["entries"] == source_tree.entries
    assert up["skipped_sockets"] == 0
    diff = _assert_same_tree(source_tree.root, str(out))
    assert diff.entries == source_tree.entries

    # The builder zeroes the root's mtime (like nydus-image); the rest of the root is kept.
    root = im.stat("/")
    assert (root.st_mtime, root.st_mtime_nsec) == (0, 0)
    assert os.lstat(out).st_mtime_ns == 0
    assert root.st_mode == os.lstat(source_tree.root).st_mode


def test_unpack_dir_refuses_non_empty_output(image, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_bytes(b"")
    with pytest.raises(errors.InvalidArgumentError):
        image.unpack_dir(out)
    assert os.listdir(out) == ["x"]


# --------------------------------------------------------------------------------------------
# unpack_tar
# --------------------------------------------------------------------------------------------


def _member_path(m: tarfile.TarInfo) -> str:
    name = m.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    return "/" if name in ("", ".") else "/" + name


def _pax_xattrs(m: tarfile.TarInfo) -> Dict[str, Any]:
    pre = "SCHILY.xattr."
    return {k[len(pre) :]: v.encode("utf-8", "surrogateescape") for k, v in m.pax_headers.items() if k.startswith(pre)}


@pytest.fixture(scope="module")
def unpacked_tar(image, tmp_path_factory):
    path = tmp_path_factory.mktemp("tar") / "image.tar"
    report = image.unpack_tar(path)
    return path, report


def _tar_mtime_ns(m) -> int:
    """Exact mtime of a tar member: the PAX record when there is one (tarfile's float
    ``mtime`` loses nanoseconds), else the whole-second header field."""
    rec = m.pax_headers.get("mtime")
    if rec is None:
        return int(m.mtime) * 10**9
    neg = rec.startswith("-")
    whole, _, frac = rec.lstrip("-").partition(".")
    ns = int(whole) * 10**9 + int((frac + "000000000")[:9])
    return -ns if neg else ns


def test_unpack_tar_headers(source_tree, unpacked_tar):
    path, report = unpacked_tar
    assert report["skipped_sockets"] == len(source_tree.sockets) == 1
    assert report["entries"] == source_tree.entries - len(source_tree.sockets)
    src = _source_entries(source_tree.root)
    seen_inodes: Dict[int, str] = {}  # source inode -> the first name the tar gave it
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    names = [_member_path(m) for m in members]
    assert len(names) == len(set(names)), "a path appears twice in the tar"
    assert set(names) == set(src) - set(source_tree.sockets)
    assert names[0] == "/"
    for m, rel in zip(members, names):
        st = src[rel]
        fmt = stat.S_IFMT(st.st_mode)
        where = f"{rel}: "
        assert m.mode == stat.S_IMODE(st.st_mode), where + "mode"
        assert (m.uid, m.gid) == (st.st_uid, st.st_gid), where + "owner"
        if rel != "/":
            assert _tar_mtime_ns(m) == st.st_mtime_ns, where + "mtime"
        assert _pax_xattrs(m) == _xattrs(_src(source_tree, rel)), where + "xattrs"
        if fmt == stat.S_IFREG:
            if m.islnk():
                # a later name of a hard-linked inode: must point at the first name seen
                target = _member_path(tarfile.TarInfo(m.linkname))
                assert seen_inodes.get(st.st_ino) == target, where + "hard link target"
                assert st.st_nlink > 1
            else:
                assert m.isreg(), where + "type"
                assert m.size == st.st_size, where + "size"
                assert st.st_ino not in seen_inodes, where + "second copy of a hard-linked file"
                seen_inodes[st.st_ino] = rel
        elif fmt == stat.S_IFDIR:
            assert m.isdir(), where + "type"
        elif fmt == stat.S_IFLNK:
            assert m.issym(), where + "type"
            assert os.fsencode(m.linkname) == os.readlink(os.fsencode(_src(source_tree, rel))), where + "target"
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            assert m.ischr() if fmt == stat.S_IFCHR else m.isblk(), where + "type"
            assert (m.devmajor, m.devminor) == (os.major(st.st_rdev), os.minor(st.st_rdev)), where + "rdev"
        elif fmt == stat.S_IFIFO:
            assert m.isfifo(), where + "type"
        else:
            pytest.fail(where + f"unexpected type {fmt:o}")
    # every device of the tree made it, including the big minors
    for rel, (kind, major, minor) in source_tree.devices.items():
        m = members[names.index(rel)]
        assert (m.type, m.devmajor, m.devminor) == ({"c": tarfile.CHRTYPE, "b": tarfile.BLKTYPE}[kind], major, minor)


def test_unpack_tar_extracts_to_source(source_tree, unpacked_tar, tmp_path):
    path, _ = unpacked_tar
    out = tmp_path / "x"
    with tarfile.open(path) as tf:
        tf.extractall(out, numeric_owner=True, filter="fully_trusted")
    diff = treecmp.compare(source_tree.root, str(out), ignore=source_tree.sockets, check_xattrs=False)
    # tarfile does not set the times of symlinks; their header mtimes are checked above.
    symlinks = set(source_tree.symlinks) | {
        p for p, st in _source_entries(source_tree.root).items() if stat.S_ISLNK(st.st_mode)
    }

    def float_rounding(d: str) -> bool:
        """tarfile applies PAX times through a float, which is exact only to ~0.2 µs."""
        m = re.fullmatch(r".*: mtime (-?\d+) != (-?\d+)", d, re.DOTALL)
        return m is not None and abs(int(m.group(1)) - int(m.group(2))) < 1000

    real = [
        d for d in diff.differences if not (d.split(": ")[0] in symlinks and ": mtime " in d) and not float_rounding(d)
    ]
    assert diff.entries == source_tree.entries - len(source_tree.sockets)
    assert not real, _summary(real)


# --------------------------------------------------------------------------------------------
# determinism, dedup, blob naming
# --------------------------------------------------------------------------------------------


def _blob_file(b: Built) -> str:
    names = os.listdir(b.blob_dir)
    assert len(names) == 1
    return os.path.join(b.blob_dir, names[0])


def _same_bytes(a: Union[str, os.PathLike[str]], b: Union[str, os.PathLike[str]]) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def test_build_is_deterministic(source_tree, built, tmp_path):
    again = build_into(source_tree.root, tmp_path / "again")
    assert dataclasses.replace(again.report, blob_path=None) == dataclasses.replace(built.report, blob_path=None)
    assert _same_bytes(again.bootstrap, built.bootstrap)
    assert _same_bytes(_blob_file(again), _blob_file(built))


def test_build_of_a_copy_is_identical(source_tree, built, tmp_path):
    """Inode numbers and on-disk directory order differ in a copy; the image must not."""
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", source_tree.root, str(copy)], check=True)
    _assert_same_tree(source_tree.root, str(copy))  # the copy itself is faithful
    again = build_into(copy, tmp_path / "img")
    assert again.report.blob_id == built.report.blob_id
    assert _same_bytes(again.bootstrap, built.bootstrap)
    assert _same_bytes(_blob_file(again), _blob_file(built))


def test_blob_named_by_sha256(built, image):
    path = _blob_file(built)
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    assert os.path.basename(path) == digest == built.report.blob_id
    assert built.report.blob_path == path
    assert image.blob_ids == [digest]
    assert built.report.blob_size == len(data)
    assert built.report.bootstrap_size == os.path.getsize(built.bootstrap)
    assert image.inspect()["blobs"][0]["compressed_size"] == len(data)


def test_report_counts(source_tree, built, image):
    r = built.report
    src = _source_entries(source_tree.root)
    regular = [st for st in src.values() if stat.S_ISREG(st.st_mode)]
    assert r.inodes == len(src)
    assert r.bytes_in == sum(st.st_size for st in {st.st_ino: st for st in regular}.values())
    chk = image.check()
    assert chk["regular_files"] == len({st.st_ino for st in regular})
    assert chk["directories"] == sum(stat.S_ISDIR(st.st_mode) for st in src.values())
    assert chk["symlinks"] == sum(stat.S_ISLNK(st.st_mode) for st in src.values())
    assert chk["special_files"] == len(source_tree.devices) + len(source_tree.fifos) + len(source_tree.sockets)
    assert chk["chunks_verified"] == r.chunks
    # the dedup directory alone accounts for 13 duplicate chunks (see test_dedup_exact)
    assert r.deduped_chunks >= 13


def test_dedup_exact(source_tree, tmp_path):
    """dedup/: a (3 chunks), a_copy (the same 3), b (chunk 0 == a's chunk 2, then 2 new chunks),
    ten identical small files (1 chunk): 19 chunk references, 6 distinct chunks."""
    b = build_into(_src(source_tree, "/dedup"), tmp_path / "img")
    r = b.report
    assert (r.chunks, r.deduped_chunks) == (6, 13)
    assert r.bytes_in == 2 * 3 * MiB + (2 * MiB + 99) + 10 * 240
    # distinct chunks, each starting on a 4 KiB boundary of the uncompressed space
    assert r.uncompressed_size == 3 * MiB + MiB + 4096 + 4096
    im = b.open()
    assert im.check()["chunk_refs"] == 19
    assert im.read("/b", 0, MiB) == im.read("/a", 2 * MiB, MiB)
    assert im.read("/a_copy") == im.read("/a")


# --------------------------------------------------------------------------------------------
# reader API against the source
# --------------------------------------------------------------------------------------------


def test_stat_every_entry(source_tree, image):
    src = _source_entries(source_tree.root)
    inos: Dict[int, int] = {}  # source inode -> image inode
    for rel, st in src.items():
        s = image.stat(rel)
        where = rel
        assert s.st_mode == st.st_mode, where
        assert (s.st_uid, s.st_gid) == (st.st_uid, st.st_gid), where
        assert s.st_nlink == st.st_nlink, where
        if stat.S_ISREG(st.st_mode):
            assert s.st_size == st.st_size, where
        if stat.S_ISLNK(st.st_mode):
            assert s.st_size == len(os.readlink(_src(source_tree, rel))), where
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            assert (s.rdev_major, s.rdev_minor) == (os.major(st.st_rdev), os.minor(st.st_rdev)), where
            assert s.st_rdev == st.st_rdev
        else:
            assert (s.rdev_major, s.rdev_minor) == (0, 0), where
        if rel != "/":
            assert s.st_mtime_ns == st.st_mtime_ns, where
        # one image inode per source inode
        assert inos.setdefault(st.st_ino, s.st_ino) == s.st_ino, where
    assert len(set(inos.values())) == len(inos)
    assert image.lookup("/") == image.root_ino == image.stat("/").st_ino


def test_special_metadata(source_tree, image):
    for rel, mode in source_tree.modes.items():
        assert stat.S_IMODE(image.stat(rel).st_mode) == mode, rel
    for rel, (uid, gid) in source_tree.owners.items():
        s = image.stat(rel)
        assert (s.st_uid, s.st_gid) == (uid, gid), rel
    assert image.stat("/special/big_minor").rdev_minor == 70000
    assert (image.stat("/special/blk_big").rdev_major, image.stat("/special/blk_big").rdev_minor) == (4095, 1048575)
    assert stat.S_ISSOCK(image.stat("/special/sock").st_mode)
    assert stat.S_ISFIFO(image.stat("/special/fifo").st_mode)
    assert image.stat("/files/one_byte").st_mtime_ns == 0
    assert image.stat("/files/empty").st_mtime_ns == 4_102_444_800_123_456_789
    for group in source_tree.hardlink_groups:
        stats = [image.stat(p) for p in group]
        assert len({s.st_ino for s in stats}) == 1, group
        assert all(s.st_nlink == len(group) for s in stats), group
    deep = image.stat(source_tree.deep_file)
    assert deep.is_file() and image.read(source_tree.deep_file) == b"at the bottom\n"
    assert len(os.fsencode(source_tree.deep_file)) > 2000


def test_listdir_and_readdir(source_tree, image):
    src = _source_entries(source_tree.root)
    for rel, st in src.items():
        if not stat.S_ISDIR(st.st_mode):
            continue
        path = os.fsencode(_src(source_tree, rel))
        expect = sorted(os.listdir(path))
        assert image.listdir(os.fsencode(rel)) == expect, rel  # bytes in, bytes out, sorted
        assert image.listdir(rel) == [os.fsdecode(n) for n in expect], rel
        ents = image.readdir(rel)
        by_name = {n: nid for n, nid, _ in ents}
        assert by_name[b"."] == image.stat(rel).st_ino
        parent = os.path.dirname(rel.rstrip("/")) or "/"
        assert by_name[b".."] == image.stat(parent).st_ino
        assert len(ents) == len(expect) + 2
        for name, nid, _type in ents:
            if name not in (b".", b".."):
                assert nid == image.stat(os.fsencode(rel).rstrip(b"/") + b"/" + name).st_ino


def test_walk_matches_os_walk(source_tree, image):
    got = {d: (sorted(ds), sorted(fs)) for d, ds, fs in image.walk()}
    want = {}
    for dirpath, dirnames, filenames in os.walk(source_tree.root):
        rel = "/" + os.path.relpath(dirpath, source_tree.root) if dirpath != source_tree.root else "/"
        # os.walk lists symlinks to directories among dirnames; the image does not follow them
        links = [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]
        want[rel] = (sorted(set(dirnames) - set(links)), sorted(filenames + links))
    assert got == want


def test_readlink(source_tree, image):
    for rel, target in source_tree.symlinks.items():
        assert image.readlink(rel) == target
        assert image.readlink(os.fsencode(rel)) == os.fsencode(target)
    assert image.readlink("/xattr/link") == "file"
    with pytest.raises(errors.NotASymlinkError):
        image.readlink("/files/hello.txt")
    with pytest.raises(errors.NotFoundError):
        image.readlink("/links/none")


def test_xattrs_every_entry(source_tree, image):
    src = _source_entries(source_tree.root)
    with_xattrs = 0
    for rel in src:
        expect = _xattrs(_src(source_tree, rel))
        assert sorted(image.listxattr(rel)) == sorted(expect), rel
        for k, v in expect.items():
            assert image.getxattr(rel, k) == v, (rel, k)
        with_xattrs += bool(expect)
    assert with_xattrs >= len(source_tree.xattrs)
    for rel, attrs in source_tree.xattrs.items():
        for k, v in attrs.items():
            assert image.getxattr(rel, k) == v
    with pytest.raises(errors.NoAttributeError) as ei:
        image.getxattr("/xattr/file", "user.absent")
    assert ei.value.errno == errno.ENODATA
    assert image.listxattr("/files/hello.txt") == []


def _read_src(tree, rel, offset, size):
    with open(_src(tree, rel), "rb") as f:
        f.seek(offset)
        return f.read(size)


@pytest.mark.parametrize(
    "rel",
    [
        "/files/multi_random",
        "/files/multi_mixed",
        "/files/chunk_plus_one",
        "/files/sparse",
        "/files/all_hole",
        "/hard/trio_2",
        "/dedup/b",
    ],
)
def test_read_odd_offsets(source_tree, image, rel):
    size = os.path.getsize(_src(source_tree, rel))
    assert image.stat(rel).st_size == size
    cases = [
        (0, 1),
        (1, 4095),
        (4095, 2),
        (MiB - 1, 2),
        (MiB - 4097, 8195),
        (MiB, MiB),
        (MiB - 3, 2 * MiB + 6),
        (2 * MiB - 7, MiB + 14),
        (size - 1, 1),
        (size - 5, 100),
        (size, 10),
        (size + 12345, 10),
        (7, size),
        (0, size),
        (3 * MiB + 1, 999_999),
    ]
    for off, n in cases:
        assert image.read(rel, off, n) == _read_src(source_tree, rel, off, n), (rel, off, n)
    assert image.read(rel) == _read_src(source_tree, rel, 0, size)
    assert image.read(rel, 12345) == _read_src(source_tree, rel, 12345, size)


def _last_small_file(tree) -> str:
    n = tree.small_files - 1
    return f"/small/d{n // 250:03d}/f{n:05d}"


def test_read_small_and_sparse(source_tree, image):
    for rel in (
        "/files/empty",
        "/files/one_byte",
        "/files/hello.txt",
        "/files/block_exact",
        "/files/block_plus_one",
        "/files/chunk_exact",
        "/files/sparse_small",
        "/small/d000/f00001",
        _last_small_file(source_tree),
    ):
        data = _read_src(source_tree, rel, 0, 1 << 30)
        assert image.read(rel) == data, rel
        for off in (0, 1, 3, len(data) // 2, max(len(data) - 1, 0)):
            assert image.read(rel, off, 5) == data[off : off + 5], (rel, off)
    assert image.read("/files/all_hole") == bytes(MiB + 5000)
    sparse = image.read("/files/sparse")
    assert sparse[: 2 * MiB + 100] == bytes(2 * MiB + 100)
    assert sparse[-(5 * MiB + 3 - 2 * MiB - 100 - 70000) :] == bytes(5 * MiB + 3 - 2 * MiB - 100 - 70000)


def test_reader_errors(image):
    with pytest.raises(FileNotFoundError):
        image.stat("/no/such/path")
    with pytest.raises(errors.NotFoundError):
        image.read("/files/missing")
    with pytest.raises(IsADirectoryError):
        image.read("/files", 0, 1)
    with pytest.raises(NotADirectoryError):
        image.stat("/files/hello.txt/x")
    with pytest.raises(errors.InvalidArgumentError):
        image.read("/special/fifo", 0, 1)


def test_missing_blob(built, tmp_path):
    """Only the blob is needed for reads; a missing blob is a BlobMissingError, not garbage."""
    im = nydus_hybrid.Image.open(built.bootstrap, tmp_path)  # empty blob dir
    assert im.stat("/files/hello.txt").st_size == 13  # metadata needs no blob
    with pytest.raises(errors.BlobMissingError):
        im.read("/files/hello.txt")


# --------------------------------------------------------------------------------------------
# tar sources
# --------------------------------------------------------------------------------------------


def test_tar_source_roundtrip(source_tree, tmp_path):
    """A GNU tar of the tree made by Python's tarfile (no xattrs; whole-second times) builds
    to the same tree."""
    tar_path = tmp_path / "src.tar"
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tf:
        for rel, st in sorted(_source_entries(source_tree.root).items()):
            if rel in source_tree.sockets:
                continue
            path = _src(source_tree, rel)
            ti = tf.gettarinfo(path, arcname="." + rel if rel != "/" else ".")
            ti.mtime = st.st_mtime_ns // 10**9  # not via a float, which can round up
            if ti.isreg():
                with open(path, "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)
    b = build_into(tar_path, tmp_path / "img")
    out = tmp_path / "out"
    b.open().unpack_dir(out)
    _assert_same_tree(
        source_tree.root, str(out), ignore=source_tree.sockets, mtime_resolution_ns=10**9, check_xattrs=False
    )


def test_own_tar_output_builds_back(source_tree, unpacked_tar, tmp_path):
    """The tar that unpack_tar writes is a valid build input and gives the source back
    exactly, nanosecond mtimes included (PAX records); sockets aside."""
    path, _ = unpacked_tar
    b = build_into(path, tmp_path / "img")
    out = tmp_path / "out"
    b.open().unpack_dir(out)
    _assert_same_tree(source_tree.root, str(out), ignore=source_tree.sockets)


def test_tar_xattr_value_with_newline(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "user.nl", b"line1\nline2")
    tar_path = tmp_path / "s.tar"
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", str(src), "-cf", str(tar_path), "."], check=True)
    b = build_into(tar_path, tmp_path / "img")
    assert b.open().getxattr("/f", "user.nl") == b"line1\nline2"


# --------------------------------------------------------------------------------------------
# edge cases found while writing these tests
# --------------------------------------------------------------------------------------------


def test_tar_pax_mtime(tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    os.utime(src, ns=(1_600_000_000_700_000_000,) * 2)
    tar_path = tmp_path / "s.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(src, arcname="f")
    with tarfile.open(tar_path) as tf:
        assert tf.getmember("f").pax_headers["mtime"] == "1600000000.7"
    st = build_into(tar_path, tmp_path / "img").open().stat("/f")
    # POSIX: a PAX mtime record overrides the ustar header field.
    assert (st.st_mtime, st.st_mtime_nsec) == (1_600_000_000, 700_000_000)


def test_unpack_tar_non_utf8_xattr_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    name = b"user.\xff\xfename"
    os.setxattr(os.fsencode(src / "f"), name, b"v")
    b = build_into(src, tmp_path / "img")
    im = b.open()
    assert [os.fsencode(n) for n in im.listxattr("/f")] == [name]  # the image keeps the raw name
    try:
        im.unpack_tar(tmp_path / "o.tar")
    except errors.NydusError:
        return  # refusing is acceptable; silently renaming is not
    with tarfile.open(tmp_path / "o.tar") as tf:
        keys = [k.encode("utf-8", "surrogateescape") for m in tf.getmembers() for k in m.pax_headers]
    assert b"SCHILY.xattr." + name in keys


def test_pre_1970_mtime(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "old").write_bytes(b"x")
    os.utime(src / "old", ns=(-1_500_000_000,) * 2)
    b = build_into(src, tmp_path / "img")
    out = tmp_path / "out"
    b.open().unpack_dir(out)
    assert os.lstat(out / "old").st_mtime_ns == -1_500_000_000


# --------------------------------------------------------------------------------------------
# chunk digests and CRCs, recomputed independently of the core
# --------------------------------------------------------------------------------------------


@functools.cache
def _crc32c_table() -> Tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table driven."""
    table = _crc32c_table()
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _chunk_table(bootstrap, image):
    """(digest, blob_index, flags, csize, usize, coff, uoff, index, crc) per spec 1.7."""
    import struct

    off, size = image.inspect()["superblock"]["chunk_table"]
    assert size % 80 == 0
    with open(bootstrap, "rb") as f:
        f.seek(off)
        raw = f.read(size)
    out = []
    for i in range(0, size, 80):
        e = raw[i : i + 80]
        bi, flags, csize, usize, coff, uoff, _foff, index, crc = struct.unpack("<IIIIQQQII", e[32:])
        out.append((e[:32], bi, flags, csize, usize, coff, uoff, index, crc))
    return out


def test_crc32c_helper():
    assert _crc32c(b"123456789") == 0xE3069283  # the standard check value


def test_chunk_digests_recomputed(tmp_path):
    """sha256 of every chunk's bytes (taken from the flattened blob) equals the digest in the
    bootstrap's chunk table, and its CRC-32C the stored CRC."""
    import random

    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    sizes = [0, 1, 4095, 4096, 4097, 16383, 16384, 16385, 50000, 123457]
    for i, n in enumerate(sizes):
        (src / f"f{i}").write_bytes(rng.randbytes(n // 2) + b"abc" * (n // 6) + bytes(n - n // 2 - 3 * (n // 6)))
    (src / "dup").write_bytes((src / "f9").read_bytes())
    b = build_into(src, tmp_path / "img", digester="sha256", chunk_size=0x4000)
    im = b.open()
    flat = tmp_path / "flat"
    im.export_flat_blob(flat)
    data = flat.read_bytes()
    blob_size = os.path.getsize(_blob_file(b))
    table = _chunk_table(b.bootstrap, im)
    expected_chunks = sum((n + 0x3FFF) // 0x4000 for n in sizes)
    assert b.report.chunks == len(table) < expected_chunks  # dup and repeated text dedupe
    assert len({e[0] for e in table}) == len(table)
    assert [e[0] for e in table] == sorted(e[0] for e in table)  # sorted by digest
    assert sorted(e[7] for e in table) == list(range(len(table)))
    regions = []
    for digest, bi, flags, csize, usize, coff, uoff, index, crc in table:
        assert bi == 0
        assert uoff % 4096 == 0 and 0 < usize <= 0x4000
        chunk = data[uoff : uoff + usize]
        assert hashlib.sha256(chunk).digest() == digest, index
        assert flags & 0x10, "HAS_CRC32 expected on every chunk"
        assert _crc32c(chunk) == crc, index
        assert coff + csize <= blob_size
        regions.append((coff, coff + csize))
    regions.sort()
    assert all(a[1] <= b_[0] for a, b_ in zip(regions, regions[1:])), "compressed chunks overlap"
    # and the image reads the files back
    for i in range(len(sizes)):
        assert im.read(f"/f{i}") == (src / f"f{i}").read_bytes()
