"""`nydus-hybrid merge` against the real `nydus-image merge` (2.2) on the same layer blobs:
a lower layer holding the generated tree (every file type, hard links, xattrs) and an upper
layer that changes, adds and deletes files and makes a directory opaque. The real
`nydus-image check` accepts our merged bootstrap, and the tree it serves equals both the
real merge's and the OCI rootfs flattened from the layer tarballs here."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nydus_hybrid
from nydus_hybrid import Image, treecmp
from nydus_hybrid.builder import merge
from tests.helpers import reference
from tests.helpers.layers import flatten


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """(lower.tar, upper.tar, [layer blobs], blob dir, (lower dir, upper dir))."""
    from tests.helpers import treegen

    if os.geteuid() != 0:
        pytest.skip("the generated tree needs root")
    tmp = tmp_path_factory.mktemp("merge")
    lower = tmp / "lower"
    treegen.make_tree(str(lower), small_files=300)
    upper = tmp / "upper"
    gone = sorted(p.name for p in (lower / "files").iterdir() if p.is_file() and not p.is_symlink())[0]
    (upper / "dirs").mkdir(parents=True)
    (upper / "dirs" / ".wh..wh..opq").write_bytes(b"")
    (upper / "dirs" / "only-upper").write_bytes(b"upper\n")
    (upper / "files").mkdir()
    (upper / "files" / f".wh.{gone}").write_bytes(b"")
    (upper / "files" / "changed").write_bytes(b"a new file in a changed directory\n")
    (upper / "added").mkdir()
    (upper / "added" / "file").write_bytes(os.urandom(200_000))
    tars = []
    for name, root in (("lower", lower), ("upper", upper)):
        t = tmp / f"{name}.tar"
        subprocess.run(["tar", "--xattrs", "-C", str(root), "-cf", str(t), "."], check=True)
        tars.append(t)
    blob_dir = tmp / "blobs"
    blobs = []
    for t in tars:
        r = nydus_hybrid.build(t, None, blob_dir, whiteout_spec="none", inline_bootstrap=True, progress=False)
        assert r.blob_path is not None
        blobs.append(Path(r.blob_path))
    return tars[0], tars[1], blobs, blob_dir, (lower, upper)


def test_our_merge_is_the_real_merge_and_the_oci_rootfs(layers, tmp_path):
    lower_tar, upper_tar, blobs, blob_dir, _ = layers
    ours = tmp_path / "ours.boot"
    report = merge(blobs, ours)
    digests = [hashlib.sha256(b.read_bytes()).hexdigest() for b in blobs]
    assert report.blobs == digests

    out = reference.check(ours, blob_dir)
    assert all(d in out for d in digests)
    # The real merge of the same layers, from their extracted bootstraps.
    theirs = tmp_path / "theirs.boot"
    assert reference.merge_layer_blobs(theirs, blobs, tmp_path) == digests

    for name, boot in (("ours", ours), ("theirs", theirs)):
        Image.open(boot, blob_dir).unpack_dir(tmp_path / name)
    same = treecmp.compare(str(tmp_path / "theirs"), str(tmp_path / "ours"), check_root_mtime=True)
    assert same.differences == [], same.differences[:10]
    rootfs = tmp_path / "rootfs"
    flatten([lower_tar, upper_tar], rootfs)
    diff = treecmp.compare(str(rootfs), str(tmp_path / "ours"))
    assert diff.differences == [], diff.differences[:10]
    assert (tmp_path / "ours" / "dirs").exists() and os.listdir(tmp_path / "ours" / "dirs") == ["only-upper"]


def test_the_cli_merges_and_reports(layers, tmp_path):
    _, _, blobs, blob_dir, _ = layers
    out = tmp_path / "m.boot"
    p = subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", "merge", "-B", str(out), "--prefetch-policy", "fs", *map(str, blobs)],
        input="/added\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    img = Image.open(out, blob_dir)
    assert img.inspect()["superblock"]["prefetch_table"][1] == 4
    assert img.check()["chunks_verified"] > 0


def test_a_build_over_a_parent_is_the_real_ones(layers, tmp_path):
    """`create --parent-bootstrap` by both tools, from the same lower image: the real check
    accepts ours, and the two images unpack to the same tree. Directory sources: the real
    tool's tar reader refuses GNU tar's PAX records for xattrs holding newlines."""
    _, _, _, _, (lower_dir, upper_dir) = layers
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    base = tmp_path / "base.boot"
    p = subprocess.run(
        [reference.tool("nydus-image"), "create", "-B", str(base), "-D", str(blob_dir), str(lower_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    ours, theirs = tmp_path / "ours.boot", tmp_path / "theirs.boot"
    common = ["--parent-bootstrap", str(base), "-D", str(blob_dir), str(upper_dir)]
    p = subprocess.run(
        [reference.tool("nydus-image"), "create", "-B", str(theirs), *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", "create", "-B", str(ours), "--no-progress", *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    reference.check(ours, blob_dir)
    for name, boot in (("ours", ours), ("theirs", theirs)):
        Image.open(boot, blob_dir).unpack_dir(tmp_path / name)
    same = treecmp.compare(str(tmp_path / "theirs"), str(tmp_path / "ours"), check_root_mtime=True)
    assert same.differences == [], same.differences[:10]
    assert not (tmp_path / "ours" / "files" / ".wh.changed").exists()
