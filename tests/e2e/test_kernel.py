"""The Linux kernel's EROFS reads what we write: file-backed mounts of the exported block
image and of the bootstrap with a flattened blob device, compared with the source tree.
Also the v2.2 fixture's metadata as the kernel sees it. Skipped only without erofs/root."""

from __future__ import annotations

import os
import stat

import pytest

import nydus_hybrid
from nydus_hybrid import treecmp
from nydus_hybrid.mounts import erofs
from tests.helpers.images import FIXTURE_BLOB_ID, build_into

pytestmark = pytest.mark.kernel


def _assert_same(expected: str, actual: str, **kw):
    diff = treecmp.compare(expected, actual, **kw)
    shown = [d if len(d) < 300 else d[:140] + " ... " + d[-140:] for d in diff.differences[:25]]
    assert diff.ok, f"{len(diff.differences)} differences:\n" + "\n".join(shown)
    return diff


@pytest.fixture(scope="module")
def exported(image, tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    block = d / "image.erofs"
    flat = d / "blob0.flat"
    n_block = image.export_block(block)
    n_flat = image.export_flat_blob(flat, 0)
    return block, flat, n_block, n_flat


def test_export_sizes(image, built, exported):
    block, flat, _, _ = exported
    blob = image.inspect()["blobs"][0]
    # the flattened blob is the blob's whole uncompressed address space
    assert os.path.getsize(flat) == blob["uncompressed_size"] == built.report.uncompressed_size
    assert os.path.getsize(block) % 4096 == 0
    assert os.path.getsize(block) >= os.path.getsize(built.bootstrap) + os.path.getsize(flat)


def test_mount_block_image(source_tree, exported, tmp_path):
    block, _, _, _ = exported
    with erofs.erofs_mounted(str(block), str(tmp_path / "mnt")) as mnt:
        diff = _assert_same(source_tree.root, mnt)  # xattrs included, root mtime ignored
        assert diff.entries == source_tree.entries
        assert os.lstat(mnt).st_mtime_ns == 0
        # spot checks through the kernel's page cache at odd offsets
        with (
            open(os.path.join(mnt, "files/multi_random"), "rb") as f,
            open(os.path.join(source_tree.root, "files/multi_random"), "rb") as g,
        ):
            for off in ((1 << 20) - 3, 3 * (1 << 20) + 12000, 5):
                f.seek(off)
                g.seek(off)
                assert f.read(9000) == g.read(9000)


def test_mount_bootstrap_with_flat_blob_device(source_tree, built, image, exported, tmp_path):
    _, flat, _, _ = exported
    with erofs.erofs_mounted(str(built.bootstrap), str(tmp_path / "mnt"), devices=[str(flat)]) as mnt:
        diff = _assert_same(source_tree.root, mnt)
        assert diff.entries == source_tree.entries
        # the kernel's inode numbers are our nids
        for rel in ("/", "/files/hello.txt", "/hard/trio_1", "/special/sock", source_tree.deep_file):
            assert os.lstat(mnt + rel).st_ino == image.stat(rel).st_ino, rel


@pytest.mark.parametrize(
    "compressor,digester,chunk_size", [("lz4_block", "sha256", 0x1000), ("none", "blake3", 0x1000000)]
)
def test_mount_other_build_options(source_tree, tmp_path, compressor, digester, chunk_size):
    """Chunk size and codec change the blob layout; the kernel must still see the same tree."""
    src = os.path.join(source_tree.root, "files")
    b = build_into(src, tmp_path / "img", compressor=compressor, digester=digester, chunk_size=chunk_size)
    block = tmp_path / "image.erofs"
    b.open().export_block(block)
    with erofs.erofs_mounted(str(block), str(tmp_path / "mnt")) as mnt:
        _assert_same(src, mnt)


def test_fixture_metadata_matches_reader(fixtures_dir, tmp_path):
    boot = fixtures_dir / "rafs-v6-2.2.boot"
    ours = nydus_hybrid.Image.open(boot, fixtures_dir)
    with erofs.erofs_mounted(str(boot), str(tmp_path / "mnt"), devices=[str(fixtures_dir / FIXTURE_BLOB_ID)]) as mnt:
        names = sorted(os.listdir(mnt))
        assert names == ours.listdir("/") == ["lib.rs", "sync_io.rs"]
        for rel in ["/"] + ["/" + n for n in names]:
            k = os.lstat(mnt + rel)
            s = ours.stat(rel)
            assert k.st_ino == s.st_ino, rel
            assert k.st_mode == s.st_mode, rel
            assert k.st_nlink == s.st_nlink, rel
            assert (k.st_uid, k.st_gid) == (s.st_uid, s.st_gid), rel
            if stat.S_ISREG(k.st_mode):
                assert k.st_size == s.st_size, rel
            assert k.st_mtime_ns == s.st_mtime_ns, rel
        assert [os.lstat(mnt + p).st_ino for p in ("/", "/lib.rs", "/sync_io.rs")] == [128, 133, 136]
        assert [os.lstat(mnt + p).st_size for p in ("/lib.rs", "/sync_io.rs")] == [16931, 13400]
        assert os.lstat(mnt + "/lib.rs").st_mtime_ns == 1676819553_628661334
