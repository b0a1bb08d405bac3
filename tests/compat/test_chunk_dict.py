"""`--chunk-dict` against the real nydus-image 2.2: two images that share a base, the second
built with the first's bootstrap as its chunk dictionary. Both tools store the same chunks,
lay out the same blob table (the new blob, then the dictionary's), and the real check
accepts ours; the saving is printed (pytest -s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nydus_hybrid import Image, treecmp
from tests.helpers import reference


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    """A base tree, and a second tree of the same base plus files of its own."""
    tmp = tmp_path_factory.mktemp("dict")
    base, second = tmp / "base", tmp / "second"
    for root in (base, second):
        (root / "usr/lib").mkdir(parents=True)
    for i in range(6):
        data = os.urandom(700_000 + i * 50_000)
        (base / f"usr/lib/lib{i}.so").write_bytes(data)
        (second / f"usr/lib/lib{i}.so").write_bytes(data)
    (second / "app").mkdir()
    (second / "app/main").write_bytes(os.urandom(400_000))
    return tmp, base, second


def blob_sizes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir())


def test_both_tools_share_the_same_chunks(two_images, tmp_path):
    _, base, second = two_images
    ref = reference.tool("nydus-image")
    results = {}
    for who in ("theirs", "ours"):
        blobs = tmp_path / who / "blobs"
        blobs.mkdir(parents=True)
        dict_boot, boot, alone = tmp_path / who / "base.boot", tmp_path / who / "second.boot", tmp_path / who / "alone"
        alone.mkdir()
        tool = [ref, "create"] if who == "theirs" else [sys.executable, "-m", "nydus_hybrid", "create", "--no-progress"]
        for argv in (
            [*tool, "-B", str(dict_boot), "-D", str(blobs), str(base)],
            [*tool, "-B", str(boot), "-D", str(blobs), "--chunk-dict", f"bootstrap={dict_boot}", str(second)],
            [*tool, "-B", str(alone / "second.boot"), "-D", str(alone), str(second)],
        ):
            p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, p.stderr
        img = Image.open(boot, blobs)
        new_blob = img.blob_ids[0]
        results[who] = {
            "blob_table": [b == new_blob for b in img.blob_ids],
            "chunks_in_new_blob": img.inspect()["blobs"][0]["chunk_count"],
            "stored_with_dict": (blobs / new_blob).stat().st_size,
            "stored_alone": blob_sizes(alone) - (alone / "second.boot").stat().st_size,
        }
        img.unpack_dir(tmp_path / who / "tree")
        assert treecmp.compare(str(second), str(tmp_path / who / "tree")).differences == []
    print(results)
    assert results["ours"]["blob_table"] == results["theirs"]["blob_table"] == [True, False]
    assert results["ours"]["chunks_in_new_blob"] == results["theirs"]["chunks_in_new_blob"] == 1
    assert results["ours"]["stored_with_dict"] * 5 < results["ours"]["stored_alone"]

    reference.check(tmp_path / "ours" / "second.boot", tmp_path / "ours" / "blobs")
