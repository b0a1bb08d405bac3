"""The persistent blob cache (localfs backend): reads fetch only the chunks they need, a
second read and a read from a restarted process make zero backend requests, and a kill -9
at any point during cache fills never makes a later read return wrong bytes."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import nydus_hybrid
from nydus_hybrid import errors

MiB = 1 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-src")
    src = root / "src"
    src.mkdir()
    rnd = random.Random(7)
    files = {}
    for i in range(6):  # 6 files x 3 distinct 1 MiB chunks
        data = rnd.randbytes(3 * MiB)
        (src / f"f{i}").write_bytes(data)
        files[f"/f{i}"] = data
    (src / "small").write_bytes(b"tiny file\n")
    files["/small"] = b"tiny file\n"
    report = nydus_hybrid.build(src, root / "boot", root / "blobs", progress=False)
    return root, report, files


def _open(root, cache):
    return nydus_hybrid.Image.open(root / "boot", root / "blobs", cache_dir=cache)


def test_reads_fetch_only_needed_chunks_then_hit_the_cache(image, tmp_path):
    root, report, files = image
    im = _open(root, tmp_path / "cache")
    assert im.read("/small") == files["/small"]
    m = im.metrics()
    opened = m["backend"]["read_count"]  # blob meta, then the one chunk
    assert (m["blobcache"]["chunk_misses"], m["blobcache"]["fills"]) == (1, 1), m
    assert im.read("/f2", MiB + 5, 10) == files["/f2"][MiB + 5 : MiB + 15]
    m = im.metrics()
    assert m["backend"]["read_count"] == opened + 1
    assert m["backend"]["read_amount_total"] > MiB  # a random (incompressible) chunk
    # every byte of every file, then again: the second pass makes no backend request
    for p, data in files.items():
        assert im.read(p) == data
    first = im.metrics()
    assert first["blobcache"]["fills"] == report.chunks
    for p, data in files.items():
        assert im.read(p, 0, len(data)) == data
    again = im.metrics()
    assert again["backend"]["read_count"] == first["backend"]["read_count"]
    assert again["blobcache"]["whole_hits"] >= len(files)
    assert os.path.getsize(tmp_path / "cache" / f"{report.blob_id}.blob.data") == report.uncompressed_size


def test_restarted_reader_makes_zero_backend_requests(image, tmp_path):
    root, report, files = image
    warm = _open(root, tmp_path / "cache")
    for p in files:
        warm.read(p)
    del warm
    code = (
        "import sys, json, nydus_hybrid\n"
        "im = nydus_hybrid.Image.open(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3])\n"
        "import hashlib\n"
        "print(json.dumps({'digests': {p: hashlib.sha256(im.read(p)).hexdigest() for p in sys.argv[4:]},"
        " 'metrics': im.metrics()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root / "boot"), str(root / "blobs"), str(tmp_path / "cache"), *files],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    import json

    doc = json.loads(out.stdout)
    assert doc["metrics"]["backend"]["read_count"] == 0, doc["metrics"]
    assert doc["metrics"]["blobcache"]["chunk_hits"] == report.chunks
    assert doc["digests"] == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


def test_corrupt_chunk_is_not_cached(image, tmp_path):
    root, report, files = image
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    blob = bytearray((root / "blobs" / report.blob_id).read_bytes())
    blob[100] ^= 0xFF  # inside the first stored chunk
    (blobs / report.blob_id).write_bytes(bytes(blob))
    im = nydus_hybrid.Image.open(root / "boot", blobs, cache_dir=tmp_path / "cache")
    bad = [p for p in files if _fails(im, p)]
    assert bad, "the damaged chunk was read without an error"
    assert im.metrics()["blobcache"]["fills"] < report.chunks
    # with the good blob back, the same cache serves correct bytes for everything
    (blobs / report.blob_id).write_bytes((root / "blobs" / report.blob_id).read_bytes())
    im = nydus_hybrid.Image.open(root / "boot", blobs, cache_dir=tmp_path / "cache")
    for p, data in files.items():
        assert im.read(p) == data


def _fails(im, path) -> bool:
    try:
        im.read(path)
        return False
    except errors.CorruptImageError:
        return True


@pytest.mark.slow
def test_kill_9_during_fills_never_serves_wrong_bytes(image, tmp_path):
    """20 readers are killed at random moments while filling the cache; after each, a fresh
    reader must read every file correctly through the same cache."""
    root, _report, files = image
    cache = tmp_path / "cache"
    filler = (
        "import sys, nydus_hybrid\n"
        "im = nydus_hybrid.Image.open(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3])\n"
        "while True:\n"
        "    for p in sys.argv[4:]:\n"
        "        im.read(p)\n"
    )
    rnd = random.Random(1)
    for round_ in range(20):
        # start from a partly filled cache sometimes, an empty one other times
        if round_ % 4 == 0:
            for f in cache.glob("*") if cache.exists() else []:
                f.unlink()
        order = list(files)
        rnd.shuffle(order)
        proc = subprocess.Popen(
            [sys.executable, "-c", filler, str(root / "boot"), str(root / "blobs"), str(cache), *order]
        )
        time.sleep(rnd.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        im = _open(root, cache)
        for p, data in files.items():
            assert im.read(p) == data, f"round {round_}: wrong bytes for {p}"
