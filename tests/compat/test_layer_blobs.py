"""Per-layer blobs with their bootstrap inside (`--blob-inline-meta`), as nydus-snapshotter's
converter packs each layer, against the real nydus-image 2.2: its `merge` and `check` take
our layer blobs, our reader takes its layer blobs, and both write the same prefetch table."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Dict, List

import pytest

import nydus_hybrid
from nydus_hybrid import Image
from tests.helpers import reference
from tests.helpers.cli import cli

LOWER = {"etc/hosts": b"127.0.0.1 localhost\n", "etc/motd": b"hello\n", "usr/lib/big": os.urandom(3 << 20)}
# The upper layer changes one file, adds one and deletes one (an OCI whiteout).
UPPER = {"etc/motd": b"changed\n", "opt/new": b"new\n", "etc/.wh.hosts": b""}


def layer_tar(path: Path, files: Dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as t:
        dirs = sorted({os.path.dirname(p) for p in files if os.path.dirname(p)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return path


def our_layer(tmp: Path, name: str, files: Dict[str, bytes]) -> Path:
    r = nydus_hybrid.build(
        layer_tar(tmp / f"{name}.tar", files),
        None,
        tmp / "blobs",
        whiteout_spec="none",
        inline_bootstrap=True,
        progress=False,
    )
    assert r.blob_path is not None and r.inline_bootstrap
    return Path(r.blob_path)


def sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_the_real_merge_and_check_take_our_layer_blobs(tmp_path):
    blobs = [our_layer(tmp_path, "lower", LOWER), our_layer(tmp_path, "upper", UPPER)]
    merged = tmp_path / "merged.boot"
    digests = reference.merge_layer_blobs(merged, blobs, tmp_path)
    assert [b.name for b in blobs] == digests, "a layer blob is named by its digest"
    out = reference.check(merged, tmp_path / "blobs")
    assert digests[0] in out and digests[1] in out
    # Its merge applied our layers' whiteouts; our reader reads the result.
    img = Image.open(merged, tmp_path / "blobs")
    assert img.read("/etc/motd") == b"changed\n"
    assert img.read("/opt/new") == b"new\n"
    assert img.read("/usr/lib/big") == LOWER["usr/lib/big"]
    with pytest.raises(FileNotFoundError):
        img.lookup("/etc/hosts")


def test_our_reader_reads_the_real_layer_blobs(tmp_path):
    tar = layer_tar(tmp_path / "lower.tar", LOWER)
    out = tmp_path / "ref.blob"
    p = subprocess.run(
        [
            *(reference.tool("nydus-image"), "create", "--type", "tar-rafs", "--blob-inline-meta"),
            *("--features", "blob-toc", "--whiteout-spec", "none", "--fs-version", "6", "-b", str(out), str(tar)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    img = Image.open_blob(out)
    for name, data in LOWER.items():
        assert img.read("/" + name) == data


def prefetch_nids(boot: bytes) -> List[int]:
    off = int.from_bytes(boot[1192:1200], "little")
    size = int.from_bytes(boot[1200:1204], "little")
    return [int.from_bytes(boot[off + i : off + i + 4], "little") for i in range(0, size, 4)]


@pytest.mark.parametrize("patterns", ["/etc/motd\n/usr\n/etc/motd\n", "/\n", "/missing\n", ""])
def test_the_prefetch_table_is_the_references(tmp_path, patterns):
    tar = layer_tar(tmp_path / "lower.tar", LOWER)
    ref_boot, our_boot = tmp_path / "ref.boot", tmp_path / "our.boot"
    common = ["--type", "tar-rafs", "--prefetch-policy", "fs", "--fs-version", "6"]
    (tmp_path / "r").mkdir()
    p = subprocess.run(
        [reference.tool("nydus-image"), "create", *common, "-B", str(ref_boot), "-D", str(tmp_path / "r"), str(tar)],
        input=patterns,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    p = cli("create", *common, "-B", our_boot, "-D", tmp_path / "o", tar, "--no-progress", input=patterns)
    assert p.returncode == 0, p.stderr
    ours = prefetch_nids(our_boot.read_bytes())
    assert ours == prefetch_nids(ref_boot.read_bytes())
    assert len(ours) == {"/\n": 1, "/missing\n": 1, "": 0}.get(patterns, 2)


def test_inline_meta_with_a_bootstrap_file_is_refused(tmp_path):
    tar = layer_tar(tmp_path / "l.tar", {"a": b"a"})
    p = cli("create", "--blob-inline-meta", "-B", tmp_path / "boot", "-D", tmp_path / "b", tar)
    assert p.returncode == 2 and "--blob-inline-meta" in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    assert not (tmp_path / "boot").exists() and not (tmp_path / "b").exists()
