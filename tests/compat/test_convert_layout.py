"""`convert`: an OCI image in a layout directory (a plain, a gzip and a zstd layer,
with whiteouts and an opaque directory) to a Nydus image in another layout, shaped as
nydusify writes it; the real nydusd mounts the result (localfs backend on the layout's
blobs) and serves the flattened OCI rootfs. Bad input leaves the target without an index."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from nydus_hybrid import Image, errors, treecmp
from nydus_hybrid.convert import oci
from nydus_hybrid.convert.convert import ConvertOptions, convert
from nydus_hybrid.convert.store import open_source, open_target
from tests.helpers import reference
from tests.helpers.layers import flatten, write_layout


def tar_of(root: Path, out: Path) -> Path:
    subprocess.run(["tar", "--xattrs", "-C", str(root), "-cf", str(out), "."], check=True)
    return out


def convert_layout(src: Path, dst: Path):
    return convert(open_source(f"oci:{src}"), open_target(f"oci:{dst}"), ConvertOptions())


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from tests.helpers import treegen

    if os.geteuid() != 0:
        pytest.skip("the generated tree needs root")
    tmp = tmp_path_factory.mktemp("convert")
    base = tmp / "base"
    treegen.make_tree(str(base), small_files=200)
    mid, top = tmp / "mid", tmp / "top"
    (mid / "dirs").mkdir(parents=True)
    (mid / "dirs" / ".wh..wh..opq").write_bytes(b"")
    (mid / "dirs" / "fresh").write_bytes(os.urandom(300_000))
    (top / "files").mkdir(parents=True)
    gone = sorted(p.name for p in (base / "files").iterdir() if p.is_file() and not p.is_symlink())[0]
    (top / "files" / f".wh.{gone}").write_bytes(b"")
    (top / "new.txt").write_bytes(b"top layer\n")
    tars = [tar_of(d, tmp / f"{d.name}.tar") for d in (base, mid, top)]
    layout = tmp / "oci"
    config = write_layout(layout, tars, ["gzip", "zstd", "tar"])
    rootfs = tmp / "rootfs"
    flatten(tars, rootfs)
    return layout, config, rootfs


def test_a_layout_converts_to_a_nydus_image_nydusd_serves(source, tmp_path):
    layout, config, rootfs = source
    target = tmp_path / "nydus"
    report = convert_layout(layout, target)
    (plat,) = report.platforms
    assert plat.platform == "linux/amd64" and len(plat.layers) == 3
    assert report.digest == plat.manifest and report.media_type == oci.MANIFEST
    assert report.totals["layers"] == 3 and report.totals["pushed_bytes"] == report.totals["blob_bytes"]
    index = json.loads((target / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [report.digest]
    blobs = target / "blobs" / "sha256"
    m = json.loads((blobs / report.digest[7:]).read_bytes())
    data, boot_layer = m["layers"][:-1], m["layers"][-1]
    assert [d["mediaType"] for d in data] == [oci.NYDUS_BLOB] * 3
    assert all(d["annotations"][oci.ANNOTATION_NYDUS_BLOB] == "true" for d in data)
    assert boot_layer["annotations"][oci.ANNOTATION_NYDUS_BOOTSTRAP] == "true"
    assert boot_layer["annotations"][oci.ANNOTATION_FS_VERSION] == "6"
    cfg = json.loads((blobs / m["config"]["digest"][7:]).read_bytes())
    assert cfg["rootfs"]["diff_ids"] == [d["annotations"][oci.ANNOTATION_UNCOMPRESSED] for d in m["layers"]]
    assert cfg["history"] == config["history"]
    for d in m["layers"]:
        assert oci.sha256_digest((blobs / d["digest"][7:]).read_bytes()) == d["digest"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress((blobs / boot_layer["digest"][7:]).read_bytes()))) as t:
        f = t.extractfile("image/image.boot")
        assert f is not None
        (tmp_path / "image.boot").write_bytes(f.read())
    img = Image.open(tmp_path / "image.boot", blobs)
    assert img.blob_ids == [d["digest"][7:] for d in data], "blob table in layer order, ids = layer digests"
    reference.check(tmp_path / "image.boot", blobs)

    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    cache.mkdir()
    nydusd_config = {
        "device": {
            "backend": {"type": "localfs", "config": {"dir": str(blobs)}},
            "cache": {"type": "blobcache", "config": {"work_dir": str(cache)}},
        },
        "mode": "direct",
        "digest_validate": False,
        "enable_xattr": True,
    }
    nydusd = reference.Nydusd(tmp_path / "nydusd", nydusd_config, tmp_path / "image.boot", mnt)
    try:
        diff = treecmp.compare(str(rootfs), str(mnt))
        assert diff.entries > 200
        # nydusd 2.2 shows an mtime of 0 as the mount time (tests/compat/test_nydus_reference.py).
        real = [d for d in diff.differences if ": mtime 0 != " not in d]
        assert real == [], real[:10]
    finally:
        nydusd.stop()


def test_a_layer_that_does_not_match_its_digest_converts_nothing(source, tmp_path):
    layout, _, _ = source
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-a", str(layout), str(bad)], check=True)
    m = json.loads((bad / "index.json").read_text())["manifests"][0]
    manifest = json.loads((bad / "blobs/sha256" / m["digest"][7:]).read_bytes())
    victim = bad / "blobs/sha256" / manifest["layers"][1]["digest"][7:]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    target = tmp_path / "target"
    with pytest.raises(errors.DigestMismatchError, match="do not match"):
        convert_layout(bad, target)
    assert not (target / "index.json").exists()
    assert not any(p.name.startswith(".nydus-convert-") for p in target.iterdir()), "temporaries are removed"


def test_the_cli_converts_a_layout_and_refuses_a_bad_reference(source, tmp_path):
    layout, _, _ = source
    target = tmp_path / "t"
    p = subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", "convert", f"oci:{layout}", f"oci:{target}:nydus", "--no-cache"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    index = json.loads((target / "index.json").read_text())
    assert index["manifests"][0]["digest"] == report["digest"]
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "nydus"}
    # `check` reads the Nydus image from the layout (localfs) and finds the OCI rootfs.
    p = subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", "check", "--source", f"oci:{layout}", "--target", f"oci:{target}:nydus"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["platforms"][0]["differences"] == []
    for bad, why in [
        ("http://127.0.0.1:5000/x:1", "without a scheme"),
        ("127.0.0.1:5000/Upper:1", "bad repository name"),
        ("127.0.0.1:5000/x@sha256:12", "sha256:<64 hex digits>"),
    ]:
        p = subprocess.run(
            [sys.executable, "-m", "nydus_hybrid", "convert", bad, f"oci:{tmp_path / 'u'}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and why in p.stderr, p.stderr
    assert not (tmp_path / "u").exists()
