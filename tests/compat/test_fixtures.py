"""Images written by Nydus itself (pre-release v2.2 builds, see the fixtures README) read
correctly, verify, and never yield wrong bytes when corrupted."""

from __future__ import annotations

import collections
import hashlib
import os
import stat
import struct
import tarfile
from typing import List, cast

import pytest

import nydus_hybrid
from nydus_hybrid import errors, treecmp
from tests.helpers.images import FIXTURE_BLOB_ID, FIXTURE_INLINE_ID, build_into

INLINE_SIZES = {"error.rs": 2816, "lib.rs": 678, "logger.rs": 3115}


@pytest.fixture(scope="module")
def fixture_image(fixtures_dir):
    return nydus_hybrid.Image.open(fixtures_dir / "rafs-v6-2.2.boot", fixtures_dir)


def _looks_like_rust(data: bytes) -> str:
    text = data.decode("utf-8")  # strict: raises on anything that is not UTF-8
    assert "\0" not in text
    assert any(k in text for k in ("fn ", "use ", "pub ", "impl ")), text[:200]
    return text


def test_fixture_tree(fixture_image):
    im = fixture_image
    assert im.listdir("/") == ["lib.rs", "sync_io.rs"]
    assert im.root_ino == 128
    expect = {"/lib.rs": (133, 16931), "/sync_io.rs": (136, 13400)}
    for path, (nid, size) in expect.items():
        s = im.stat(path)
        assert (s.st_ino, s.st_size, s.st_mode, s.st_nlink) == (nid, size, stat.S_IFREG | 0o644, 1)
    assert im.stat("/lib.rs").st_mtime_ns == 1676819553_628661334
    assert im.stat("/").st_mode == stat.S_IFDIR | 0o755
    assert im.blob_ids == [FIXTURE_BLOB_ID]


def test_fixture_contents(fixture_image):
    for path, size in (("/lib.rs", 16931), ("/sync_io.rs", 13400)):
        data = fixture_image.read(path)
        assert len(data) == size
        _looks_like_rust(data)
        # partial reads agree with the whole
        for off in (0, 1, 4095, 4096, 12345, size - 1):
            assert fixture_image.read(path, off, 777) == data[off : off + 777]


def test_fixture_check_verifies_every_chunk(fixture_image):
    rep = fixture_image.check()
    assert rep["chunks_verified"] == 2
    assert rep["blobs_checked"] == 1
    assert rep["bytes_verified"] == 16931 + 13400
    assert (rep["regular_files"], rep["directories"]) == (2, 1)


def test_fixture_chunk_table_digests_match_data(fixtures_dir, fixture_image):
    """The bootstrap's chunk table (spec 1.7, 80-byte entries at 16384) holds blake3 digests of
    the uncompressed chunks; the blob's blob.digest section holds the same 2 digests."""
    boot = (fixtures_dir / "rafs-v6-2.2.boot").read_bytes()
    entries = [boot[16384 + 80 * i : 16384 + 80 * (i + 1)] for i in range(2)]
    parsed = []
    for e in entries:
        digest = e[:32]
        _blob_index, _flags, csize, usize, coff, uoff, _foff, index, _crc = struct.unpack("<IIIIQQQII", e[32:])
        parsed.append((index, digest, csize, usize, coff, uoff))
    parsed.sort()
    assert [(p[2], p[3], p[4]) for p in parsed] == [(4828, 16931, 0), (2974, 13400, 4828)]
    blob = (fixtures_dir / FIXTURE_BLOB_ID).read_bytes()
    assert [blob[12954:12986], blob[12986:13018]] == [p[1] for p in parsed]
    # the blob id is sha256 of the file without its blob.digest payload (spec 6.8)
    assert hashlib.sha256(blob[:12954] + blob[13018:]).hexdigest() == FIXTURE_BLOB_ID
    assert hashlib.sha256(blob).hexdigest() != FIXTURE_BLOB_ID


def test_inline_blob(fixtures_dir):
    im = nydus_hybrid.Image.open_blob(fixtures_dir / FIXTURE_INLINE_ID)
    assert im.listdir("/") == sorted(INLINE_SIZES)
    for name, size in INLINE_SIZES.items():
        assert im.stat("/" + name).st_size == size
        data = im.read("/" + name)
        assert len(data) == size
        _looks_like_rust(data)
    # the placeholder blob id is replaced by the blob's own name (ERRATA E5)
    assert im.blob_ids == [FIXTURE_INLINE_ID]
    assert hashlib.sha256((fixtures_dir / FIXTURE_INLINE_ID).read_bytes()).hexdigest() == FIXTURE_INLINE_ID
    rep = im.check()
    assert rep["chunks_verified"] == 3
    assert rep["bytes_verified"] == sum(INLINE_SIZES.values())


def test_inline_blob_without_image_boot_is_rejected(fixtures_dir):
    """A plain data blob has no image.boot section: open_blob must say so, not misread."""
    with pytest.raises(errors.CorruptImageError):
        nydus_hybrid.Image.open_blob(fixtures_dir / FIXTURE_BLOB_ID)


# --------------------------------------------------------------------------------------------
# flipped bytes: an error or the original bytes, never wrong bytes
# --------------------------------------------------------------------------------------------


def _flip_each(path, positions, masks, probe):
    """Flip one byte at a time (restoring it after) and collect probe()'s outcome."""
    raw = path.read_bytes()
    outcomes: collections.Counter[str] = collections.Counter()
    wrong = []
    fd = os.open(path, os.O_RDWR)
    try:
        for mask in masks:
            for pos in positions:
                os.pwrite(fd, bytes([raw[pos] ^ mask]), pos)
                try:
                    for what in probe():
                        outcomes[what] += 1
                        if what.startswith("WRONG"):
                            wrong.append((pos, mask, what))
                finally:
                    os.pwrite(fd, raw[pos : pos + 1], pos)
    finally:
        os.close(fd)
    assert path.read_bytes() == raw
    return outcomes, wrong


def test_flipped_bytes_in_lib_rs_chunk(fixture_copy, fixture_image):
    """Every byte of lib.rs's compressed chunk (blob offsets 0..4828, spec E-7)."""
    original = fixture_image.read("/lib.rs")
    boot = fixture_copy / "rafs-v6-2.2.boot"

    def probe():
        im = nydus_hybrid.Image.open(boot, fixture_copy)
        try:
            data = im.read("/lib.rs")
        except (errors.DecompressError, errors.DigestMismatchError) as e:
            assert isinstance(e, errors.CorruptImageError) and e.errno == 5
            return [type(e).__name__]
        return ["same" if data == original else "WRONG"]

    outcomes, wrong = _flip_each(fixture_copy / FIXTURE_BLOB_ID, range(4828), (0x01, 0x80, 0xFF), probe)
    assert not wrong, wrong[:20]
    assert sum(outcomes.values()) == 3 * 4828
    # almost every flip is caught; zstd's few redundant bits may still decode to the original
    assert outcomes["same"] < 0.02 * 3 * 4828, outcomes
    assert outcomes["DigestMismatchError"] > 0 and outcomes["DecompressError"] > 0, outcomes


def test_flipped_bytes_anywhere_in_data_blob(fixture_copy, fixture_image):
    """Every byte of the blob, for both files and check(): no flip ever yields wrong bytes."""
    originals = {p: fixture_image.read(p) for p in ("/lib.rs", "/sync_io.rs")}
    boot = fixture_copy / "rafs-v6-2.2.boot"

    def probe():
        out = []
        for p, want in originals.items():
            try:
                got = nydus_hybrid.Image.open(boot, fixture_copy).read(p)
                out.append("same" if got == want else f"WRONG {p}")
            except errors.CorruptImageError as e:
                out.append(type(e).__name__)
        return out

    blob = fixture_copy / FIXTURE_BLOB_ID
    outcomes, wrong = _flip_each(blob, range(os.path.getsize(blob)), (0x01,), probe)
    assert not wrong, wrong[:20]
    assert outcomes["same"] < sum(outcomes.values())


def test_flipped_bytes_inline_blob(fixture_copy, fixtures_dir):
    """Every byte of the inline-bootstrap blob: metadata and data are right or an error."""
    ref = nydus_hybrid.Image.open_blob(fixtures_dir / FIXTURE_INLINE_ID)
    want = {n: (ref.stat("/" + n), ref.read("/" + n)) for n in INLINE_SIZES}
    path = fixture_copy / FIXTURE_INLINE_ID

    def probe():
        try:
            im = nydus_hybrid.Image.open_blob(path)
            # a str path lists str names (Image.listdir is annotated with the Union of both)
            names = cast(List[str], im.listdir("/"))
        except errors.CorruptImageError as e:
            return ["open: " + type(e).__name__]
        if names != sorted(want):
            return [f"WRONG names {names!r}"]
        out = []
        for n in names:
            try:
                st = im.stat("/" + n)
                data = im.read("/" + n)
            except errors.CorruptImageError as e:
                out.append(type(e).__name__)
                continue
            out.append("same" if (st, data) == want[n] else f"WRONG {n}")
        return out

    outcomes, wrong = _flip_each(path, range(os.path.getsize(path)), (0x01,), probe)
    assert not wrong, wrong[:20]
    assert outcomes["same"] < sum(outcomes.values())


def test_unverified_reads_are_opt_in(fixture_copy, fixture_image):
    """With verify=False a corrupted but decodable chunk is returned as is; the default
    (verify=True) must refuse the same bytes."""
    boot = fixture_copy / "rafs-v6-2.2.boot"
    blob = fixture_copy / FIXTURE_BLOB_ID
    # the fixture chunks are zstd frames; find a flip that still decompresses to other bytes
    raw = blob.read_bytes()
    original = fixture_image.read("/lib.rs")
    fd = os.open(blob, os.O_RDWR)
    try:
        for pos in range(4828):
            os.pwrite(fd, bytes([raw[pos] ^ 0x01]), pos)
            try:
                data = nydus_hybrid.Image.open(boot, fixture_copy, verify=False).read("/lib.rs")
            except errors.CorruptImageError:
                data = None
            if data is not None and data != original:
                with pytest.raises(errors.DigestMismatchError):
                    nydus_hybrid.Image.open(boot, fixture_copy).read("/lib.rs")
                with pytest.raises(errors.DigestMismatchError):
                    nydus_hybrid.Image.open(boot, fixture_copy).check()
                return
            os.pwrite(fd, raw[pos : pos + 1], pos)
    finally:
        os.close(fd)
    pytest.fail("no flip decoded to different bytes")


# --------------------------------------------------------------------------------------------
# the fixture tar as a builder input
# --------------------------------------------------------------------------------------------


def test_build_all_entry_type_tar(fixtures_dir, tmp_path):
    tar_path = fixtures_dir / "all-entry-type.tar"
    b = build_into(tar_path, tmp_path / "img")
    im = b.open()
    rep = im.check()
    assert rep["chunks_verified"] == b.report.chunks

    with tarfile.open(tar_path) as tf:
        members = tf.getmembers()
    norm = lambda n: "/" + n.lstrip("./").rstrip("/") if n.strip("./") else "/"  # noqa: E731
    by_path = {norm(m.name): m for m in members}
    hardlinks = [m for m in members if m.islnk()]
    dangling = [m for m in members if m.issym()]
    assert hardlinks and dangling  # the fixture has both (README)
    for path, m in by_path.items():
        s = im.stat(path)
        # symlink permissions are always 0777 on Linux, whatever the tar header says
        assert stat.S_IMODE(s.st_mode) == (0o777 if m.issym() else m.mode), path
        assert (s.st_uid, s.st_gid) == (m.uid, m.gid), path
        if path != "/":
            assert s.st_mtime == int(m.mtime), path
        if m.isreg():
            assert s.st_size == m.size
            with tarfile.open(tar_path) as tf:
                member = tf.extractfile(m)
                assert member is not None, path
                assert im.read(path) == member.read(), path
        elif m.isdir():
            assert s.is_dir()
        elif m.issym():
            assert s.is_symlink() and im.readlink(path) == m.linkname, path
        elif m.islnk():
            target = norm(m.linkname)
            assert s.st_ino == im.stat(target).st_ino, path
            assert s.st_nlink >= 2
            assert im.read(path) == im.read(target)
    for m in dangling:
        target = m.linkname
        resolved = (
            os.path.normpath(os.path.join(os.path.dirname(norm(m.name)), target))
            if not target.startswith("/")
            else target
        )
        with pytest.raises(FileNotFoundError):
            im.stat(resolved)
    # every path in the image came from the tar (plus implicit parents)
    image_paths = set()
    for d, dirs, files in im.walk():
        for n in dirs + files:
            image_paths.add(d.rstrip("/") + "/" + n)
    assert image_paths - set(by_path) <= {os.path.dirname(p) for p in by_path}

    # and it unpacks to what tar itself extracts
    out_tar, out_img = tmp_path / "tar", tmp_path / "img_out"
    with tarfile.open(tar_path) as tf:
        tf.extractall(out_tar, numeric_owner=True, filter="fully_trusted")
    im.unpack_dir(out_img)
    links = {norm(m.name) for m in dangling}
    diff = treecmp.compare(str(out_tar), str(out_img), mtime_resolution_ns=10**9)
    real = [d for d in diff.differences if not (d.split(": ")[0] in links and ": mtime " in d)]
    assert not real, real
