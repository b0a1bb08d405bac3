"""The storage layer over the localfs backend (no network): amplify_io merging, validate on
read, prefetch, cache GC, nydusd configuration documents (v1, v2, TOML) and the shapes of
the backend and blobcache metrics (spec nydusd-control-plane.md §7, §8.4, §8.5).

Every image here is made of random (incompressible) bytes, so each chunk has a distinct
content and its place in the blob is found by searching the cache's data file, which holds
uncompressed chunks at their blob offsets."""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nydus_hybrid
from nydus_hybrid import config as nconfig
from nydus_hybrid import errors
from nydus_hybrid.blobs import cache_gc

KiB = 1 << 10
MiB = 1 << 20
SMALL_CHUNK = 0x10000
CACHE_SUFFIXES = (".blob.data", ".chunk_map", ".blob.meta", ".blob.digest")


# --------------------------------------------------------------------------- helpers


@dataclass
class Img:
    root: Path
    bootstrap: Path
    blobs: Path
    report: nydus_hybrid.BuildReport
    files: Dict[str, bytes] = field(repr=False)  # image path -> bytes
    order: List[str] = field(repr=False)  # image paths of files in blob order (by their first chunk)

    @property
    def blob_id(self) -> str:
        assert self.report.blob_id is not None, "the image has no blob"
        return self.report.blob_id

    def chunks_of(self, path: str) -> int:
        return -(-len(self.files[path]) // SMALL_CHUNK)

    def cfg(self, cache, *, amplify=MiB, validate=False) -> Dict[str, Any]:
        return v2_config(self.blobs, cache, amplify=amplify, validate=validate)

    def open(self, cache, **kw) -> nydus_hybrid.Image:
        return nydus_hybrid.Image.open(self.bootstrap, config=self.cfg(cache, **kw))


def v2_config(blobs, cache, *, amplify=MiB, validate=False) -> Dict[str, Any]:
    return {
        "version": 2,
        "backend": {"type": "localfs", "localfs": {"dir": str(blobs)}},
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(cache)}, "validate": validate},
        "rafs": {"batch_size": amplify},
    }


def make_image(root: Path, layout: Dict[str, Any], seed: int) -> Img:
    """Build ``layout`` ({image path: size}) of random bytes with 64 KiB chunks, then find
    the blob order of the files from a fully read cache."""
    rnd = random.Random(seed)
    src = root / "src"
    files = {}
    for path, size in layout.items():
        p = src / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rnd.randbytes(size)
        p.write_bytes(data)
        files[path] = data
    report = nydus_hybrid.build(src, root / "boot", root / "blobs", chunk_size=SMALL_CHUNK, progress=False)
    img = Img(root, root / "boot", root / "blobs", report, files, [])
    im = img.open(root / "order-cache", amplify=0)
    for name, data in files.items():
        assert im.read(name) == data
    del im
    gc.collect()
    cached = (root / "order-cache" / f"{report.blob_id}.blob.data").read_bytes()
    offsets = {p: cached.find(d) for p, d in files.items()}
    assert all(o >= 0 for o in offsets.values())
    img.order = sorted(files, key=offsets.__getitem__)
    return img


def bc(im: nydus_hybrid.Image) -> Dict[str, Any]:
    m: Dict[str, Any] = im.metrics()["blobcache"]
    return m


def be(im: nydus_hybrid.Image) -> Dict[str, Any]:
    m: Dict[str, Any] = im.metrics()["backend"]
    return m


def cache_files(work: Path, blob_id: str) -> List[Path]:
    return [work / f"{blob_id}{s}" for s in CACHE_SUFFIXES]


def allocated(work: Path, blob_id: str) -> int:
    return sum(os.stat(p).st_blocks * 512 for p in cache_files(work, blob_id) if p.exists())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Img:
    """200 single-chunk files of 3-40 KiB."""
    rnd = random.Random(11)
    layout = {f"/f{i:03d}": rnd.randint(3 * KiB, 40 * KiB) for i in range(200)}
    return make_image(tmp_path_factory.mktemp("small"), layout, seed=12)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Img:
    """Directories of files of 3-200 KiB (up to four chunks each), plus /c/exact of
    exactly 100 KiB (one 64 KiB chunk and one of 36 KiB)."""
    rnd = random.Random(21)
    layout = {f"/top{i}": rnd.randint(3 * KiB, 100 * KiB) for i in range(4)}
    for d in ("a", "a/sub", "b", "c"):
        for i in range(15):
            layout[f"/{d}/f{i:02d}"] = rnd.randint(3 * KiB, 200 * KiB)
    layout["/c/exact"] = 100 * KiB
    return make_image(tmp_path_factory.mktemp("tree"), layout, seed=22)


# --------------------------------------------------------------------------- 1. amplify_io


def test_without_amplify_every_chunk_is_one_backend_read(small, tmp_path):
    im = small.open(tmp_path / "cache", amplify=0)
    first, *rest = small.order
    assert im.read(first) == small.files[first]  # also loads the blob meta
    for p in rest:
        before = be(im)["read_count"]
        assert im.read(p) == small.files[p]
        assert be(im)["read_count"] - before == small.chunks_of(p) == 1, p
    m = bc(im)
    assert m["amplified_chunks"] == 0
    assert m["fills"] == m["chunk_misses"] == small.report.chunks == 200


def test_amplify_merges_neighbours_into_fewer_reads(small, tmp_path):
    plain = small.open(tmp_path / "plain", amplify=0)
    merged = small.open(tmp_path / "merged", amplify=MiB)
    for p in small.order:
        a, b = plain.read(p), merged.read(p)
        assert a == b == small.files[p], p
    mp, mm = plain.metrics(), merged.metrics()
    # same blob meta reads on both; the chunk reads differ
    assert mm["backend"]["read_count"] < mp["backend"]["read_count"]
    assert mm["backend"]["read_count"] <= 3 + small.report.uncompressed_size // MiB + 2
    assert mm["blobcache"]["amplified_chunks"] > 0
    # every chunk fetched exactly once: missed ones plus those fetched along with them
    assert mm["blobcache"]["fills"] == small.report.chunks
    assert mm["blobcache"]["chunk_misses"] + mm["blobcache"]["amplified_chunks"] == small.report.chunks
    assert mm["blobcache"]["chunk_hits"] == small.report.chunks - mm["blobcache"]["chunk_misses"]


def test_amplified_run_stops_before_a_cached_chunk(small, tmp_path):
    im = small.open(tmp_path / "cache", amplify=MiB)
    k = 100
    assert im.read(small.order[k]) == small.files[small.order[k]]
    m = bc(im)
    assert m["fills"] == 1 + m["amplified_chunks"] and m["amplified_chunks"] > 0
    # k-5 .. k-1 are missing and fit easily in 1 MiB; k is cached, so the run ends there
    reads = be(im)["read_count"]
    assert im.read(small.order[k - 5]) == small.files[small.order[k - 5]]
    m2 = bc(im)
    assert m2["fills"] - m["fills"] == 5
    assert m2["amplified_chunks"] - m["amplified_chunks"] == 4
    assert be(im)["read_count"] - reads == 1
    for p in small.order[k - 5 : k]:
        assert im.read(p) == small.files[p]
    assert bc(im)["chunk_misses"] == m2["chunk_misses"]  # all of them were cached by that one read
    for p in small.order:
        assert im.read(p) == small.files[p]
    assert bc(im)["fills"] == small.report.chunks  # nothing fetched twice


# --------------------------------------------------------------------------- 2. validate on read

# (rafs.validate / v1 digest_validate are left out: spec §7.1 says nydusd rejects them for v6)
VALIDATE_FORMS = {
    "v2 cache.validate": lambda img, cache: img.cfg(cache, validate=True),
    "v1 device.cache.validate": lambda img, cache: {
        "device": {
            "backend": {"type": "localfs", "config": {"dir": str(img.blobs)}},
            "cache": {"type": "blobcache", "validate": True, "config": {"work_dir": str(cache)}},
        },
        "mode": "direct",
    },
}


def _warm_and_corrupt(img: Img, cache: Path, path: str) -> Tuple[Any, ...]:
    """Fill the cache with every file, then flip bytes inside ``path``'s cached chunk.
    Returns (offset in the data file, the corrupted bytes of ``path``)."""
    im = img.open(cache)
    for p, d in img.files.items():
        assert im.read(p) == d
    del im
    gc.collect()
    data_file = cache / f"{img.blob_id}.blob.data"
    raw = bytearray(data_file.read_bytes())
    off = raw.find(img.files[path])
    assert off >= 0
    for i in (10, 11, 500):
        raw[off + i] ^= 0x5A
    data_file.write_bytes(bytes(raw))
    return off, bytes(raw[off : off + len(img.files[path])])


@pytest.mark.parametrize("form", list(VALIDATE_FORMS))
def test_validate_refetches_a_corrupted_cached_chunk(small, tmp_path, form):
    path = small.order[42]
    cache = tmp_path / "cache"
    off, _ = _warm_and_corrupt(small, cache, path)
    im = nydus_hybrid.Image.open(small.bootstrap, config=VALIDATE_FORMS[form](small, cache))
    assert im.read(path) == small.files[path]
    m = im.metrics()
    assert m["blobcache"]["validate_failures"] == 1
    assert m["blobcache"]["chunk_misses"] == 1
    assert m["backend"]["read_count"] == 1  # the refetch; blob meta came from the cache
    # the cache was repaired, and the other files were served from it after checking
    data = (cache / f"{small.blob_id}.blob.data").read_bytes()
    assert data[off : off + len(small.files[path])] == small.files[path]
    for p, d in small.files.items():
        assert im.read(p) == d
    assert bc(im)["validate_failures"] == 1


def test_without_validate_corrupted_cache_bytes_are_served(small, tmp_path):
    """The trade-off validate buys: without it a damaged cache is trusted (and costs no
    backend read)."""
    path = small.order[42]
    cache = tmp_path / "cache"
    _, corrupted = _warm_and_corrupt(small, cache, path)
    im = small.open(cache, validate=False)
    got = im.read(path)
    assert got == corrupted and got != small.files[path]
    m = im.metrics()
    assert m["blobcache"]["validate_failures"] == 0
    assert m["backend"]["read_count"] == 0


def test_cache_data_lost_behind_a_chunk_map_is_not_served_as_zeros(small, tmp_path):
    """GC removes ``<id>.blob.data`` before ``<id>.chunk_map``; a GC killed in between (or
    any loss of the data file) leaves a map saying chunks are ready next to no data. A later
    reader must not serve the recreated, empty data file as file contents."""
    cache = tmp_path / "cache"
    im = small.open(cache)
    for p, d in small.files.items():
        assert im.read(p) == d
    del im
    gc.collect()
    (cache / f"{small.blob_id}.blob.data").unlink()
    im = small.open(cache)
    wrong = [p for p, d in small.files.items() if im.read(p) != d]
    assert wrong == [], f"{len(wrong)} of {len(small.files)} files read back wrong (zeros)"


# --------------------------------------------------------------------------- 3. prefetch


def _under(img: Img, prefix: str) -> List[Any]:
    return [p for p in img.order if p.startswith(prefix)]


def test_prefetched_directory_reads_make_no_backend_request(tree, tmp_path):
    im = tree.open(tmp_path / "cache", amplify=0)
    job = im.prefetch(["/a"])
    assert job.wait() == []
    assert job.done
    reads, misses = be(im)["read_count"], bc(im)["chunk_misses"]
    inside = _under(tree, "/a/")
    assert any(p.startswith("/a/sub/") for p in inside)  # below a subdirectory too
    for p in inside:
        assert im.read(p) == tree.files[p]
    assert be(im)["read_count"] == reads
    assert bc(im)["chunk_misses"] == misses == 0


def test_prefetch_of_a_directory_fetches_nothing_outside_it(tree, tmp_path):
    im = tree.open(tmp_path / "cache", amplify=0)
    assert im.prefetch(["/a"]).wait() == []
    inside = sum(tree.chunks_of(p) for p in _under(tree, "/a/"))
    m = bc(im)
    not_cached = {}
    for p in tree.order:
        if p.startswith("/a/"):
            continue
        before = bc(im)["chunk_misses"]
        assert im.read(p) == tree.files[p]
        not_cached[p] = bc(im)["chunk_misses"] - before
    cached_outside = sorted(p for p, n in not_cached.items() if n != tree.chunks_of(p))
    assert (m["fills"], m["prefetch_unmerged_chunks"], cached_outside) == (inside, inside, []), (
        f"prefetch of /a (its files have {inside} chunks) filled {m['fills']}, "
        f"and these files outside /a were (partly) prefetched: {cached_outside}"
    )


def test_prefetch_of_single_files(tree, tmp_path):
    im = tree.open(tmp_path / "cache", amplify=0)
    picked: List[Union[str, bytes]] = ["/c/exact", "/top1", b"/b/f03"]
    assert im.prefetch(picked, batch_size=1).wait() == []
    want = sum(tree.chunks_of(os.fsdecode(p)) for p in picked)
    m = bc(im)
    assert m["fills"] == m["prefetch_unmerged_chunks"] == m["prefetch_requests_count"] == want
    reads = be(im)["read_count"]
    for p in picked:
        assert im.read(p) == tree.files[os.fsdecode(p)]
    assert be(im)["read_count"] == reads


def test_prefetch_all_fills_everything_and_reports_it(tree, tmp_path):
    im = tree.open(tmp_path / "cache")
    assert bc(im)["data_all_ready"] is False
    job = im.prefetch(all=True, threads=3)
    assert job.wait() == []
    m = bc(im)
    assert m["data_all_ready"] is True
    assert m["fills"] == m["prefetch_unmerged_chunks"] == tree.report.chunks
    assert m["prefetch_workers"] == 3
    assert 0 < m["prefetch_requests_count"] < tree.report.chunks  # merged up to 1 MiB
    assert tree.report.bytes_in <= m["prefetch_data_amount"] <= tree.report.blob_size
    begin = m["prefetch_begin_time_secs"] * 1000 + m["prefetch_begin_time_millis"]
    end = m["prefetch_end_time_secs"] * 1000 + m["prefetch_end_time_millis"]
    assert 0 < begin <= end
    assert 0 <= m["prefetch_begin_time_millis"] < 1000 and 0 <= m["prefetch_end_time_millis"] < 1000
    assert abs(begin / 1000 - time.time()) < 3600  # wall-clock epoch time, not a duration
    reads = be(im)["read_count"]
    for p, d in tree.files.items():
        assert im.read(p) == d
    assert be(im)["read_count"] == reads
    assert bc(im)["chunk_misses"] == 0


def test_prefetch_batch_size_bounds_merging(tree, tmp_path):
    one = tree.open(tmp_path / "one")
    assert one.prefetch(all=True, batch_size=1).wait() == []
    big = tree.open(tmp_path / "big")
    assert big.prefetch(all=True, batch_size=4 * MiB).wait() == []
    assert bc(one)["prefetch_requests_count"] == tree.report.chunks  # no merging at all
    assert bc(big)["prefetch_requests_count"] < tree.report.uncompressed_size // (3 * MiB) + 2
    assert bc(one)["fills"] == bc(big)["fills"] == tree.report.chunks


def test_prefetch_under_a_bandwidth_limit_completes(tree, tmp_path):
    target = _under(tree, "/a/sub/")
    size = sum(len(tree.files[p]) for p in target)
    assert 0.5 * MiB < size < 3 * MiB
    im = tree.open(tmp_path / "cache", amplify=0)
    job = im.prefetch(["/a/sub"], bandwidth_limit=2 * MiB)
    assert job.wait() == []
    m = bc(im)
    assert m["fills"] >= sum(tree.chunks_of(p) for p in target)  # (exactly: see the test above)
    assert m["prefetch_data_amount"] >= size
    reads = be(im)["read_count"]
    for p in target:
        assert im.read(p) == tree.files[p]
    assert be(im)["read_count"] == reads


def test_prefetch_cancel_takes_effect_during_a_bandwidth_wait(tree, tmp_path):
    """At 1 KiB/s the second request of a prefetch waits minutes for its turn; cancel()
    must end the job without serving out that wait."""
    im = tree.open(tmp_path / "cache", amplify=0)
    job = im.prefetch(all=True, batch_size=1, bandwidth_limit=KiB)
    deadline = time.monotonic() + 20
    while bc(im)["prefetch_requests_count"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bc(im)["prefetch_requests_count"] >= 1
    time.sleep(0.2)  # the worker is now waiting for its bandwidth share
    job.cancel()
    deadline = time.monotonic() + 5  # a hang detector: the wait being cancelled is minutes long
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.done, "cancel() did not stop a prefetch waiting on its bandwidth limit"
    assert isinstance(job.wait(), list)
    assert bc(im)["fills"] < tree.report.chunks
    for p in tree.order[:5]:
        assert im.read(p) == tree.files[p]


def test_on_demand_reads_during_prefetch_are_correct_and_fetch_each_chunk_once(tree, tmp_path):
    im = tree.open(tmp_path / "cache")
    wrong, failures = [], []

    def reader(seed):
        order = list(tree.files)
        random.Random(seed).shuffle(order)
        try:
            for p in order:
                if im.read(p) != tree.files[p]:
                    wrong.append(p)
        except Exception as e:
            failures.append(repr(e))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    job = im.prefetch(all=True, threads=4, batch_size=256 * KiB)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert job.wait() == []
    assert failures == [] and wrong == []
    m = bc(im)
    assert m["fills"] == tree.report.chunks
    assert m["data_all_ready"] is True


def test_prefetch_needs_a_cache(tree):
    im = nydus_hybrid.Image.open(tree.bootstrap, tree.blobs)
    with pytest.raises(errors.InvalidArgumentError, match="cache"):
        im.prefetch(["/a"])
    no_cache = {"version": 2, "backend": {"type": "localfs", "localfs": {"dir": str(tree.blobs)}}}
    im = nydus_hybrid.Image.open(tree.bootstrap, config=no_cache)
    assert im.read("/top0") == tree.files["/top0"]
    with pytest.raises(errors.InvalidArgumentError):
        im.prefetch(all=True)


def test_prefetch_argument_errors(tree, tmp_path):
    im = tree.open(tmp_path / "cache")
    with pytest.raises(errors.NotFoundError):
        im.prefetch(["/a", "/no/such/dir"])
    with pytest.raises(errors.InvalidArgumentError):
        im.prefetch(all=True, threads=0)
    assert bc(im)["fills"] == 0 and be(im)["read_count"] == 0


def test_prefetch_without_paths_uses_the_image_table(tree, tmp_path):
    """``--prefetch-policy fs`` writes the paths read from stdin into the image's prefetch
    table (a directory, a file and a path that does not exist), and prefetch() with no
    paths fetches exactly what it names: afterwards those files read without a backend
    read, and a file outside it still needs one."""
    out = tmp_path / "img"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "nydus_hybrid",
            "build",
            tree.root / "src",
            "-B",
            out / "boot",
            "-D",
            out / "blobs",
            "-S",
            "64K",
            "--prefetch-policy",
            "fs",
            "--no-progress",
        ],
        input="/a\n/top0\n/no/such\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    cfg = v2_config(out / "blobs", tmp_path / "cache")
    im = nydus_hybrid.Image.open(out / "boot", config=cfg)
    assert im.inspect()["superblock"]["prefetch_table"][1] == 8  # two nids: /a and /top0
    job = im.prefetch()
    assert job.wait() == []
    assert bc(im)["fills"] > 0
    listed = [f for f in tree.files if f.startswith("/a/") or f == "/top0"]
    before = be(im)["read_count"]
    for f in listed:
        assert im.read(f) == tree.files[f]
    assert be(im)["read_count"] == before, "a listed file was not prefetched"
    assert im.read("/b/f00") == tree.files["/b/f00"]
    assert be(im)["read_count"] > before, "a file outside the table was prefetched too"


# --------------------------------------------------------------------------- 4. cache GC


@pytest.fixture
def two_cached(small, tree, tmp_path):
    """A work dir holding caches of both images (a few files read from each), closed."""
    work = tmp_path / "work"
    for img in (small, tree):
        im = img.open(work)
        for p in img.order[:3]:
            assert im.read(p) == img.files[p]
        del im
    gc.collect()
    for img in (small, tree):
        assert all(f.exists() for f in cache_files(work, img.blob_id))
    return work


def test_gc_never_removes_a_blob_open_in_this_process(small, tree, two_cached):
    work = two_cached
    im = small.open(work)
    assert im.read(small.order[0]) == small.files[small.order[0]]
    r = cache_gc(work, max_bytes=0)
    assert r["removed"] == [tree.blob_id]
    assert r["in_use"] == [small.blob_id]
    assert r["freed_bytes"] > 0 and r["kept_bytes"] > 0
    assert not any(f.exists() for f in cache_files(work, tree.blob_id))
    assert all(f.exists() for f in cache_files(work, small.blob_id))
    # the open image keeps working, both from its cache and for chunks not yet fetched
    for p, d in small.files.items():
        assert im.read(p) == d
    del im
    gc.collect()
    r = cache_gc(work, max_bytes=0)
    assert r["removed"] == [small.blob_id] and r["in_use"] == []
    assert r["kept_bytes"] == 0
    assert sorted(os.listdir(work)) == []
    # a removed cache is rebuilt on the next use
    im = small.open(work)
    assert im.read(small.order[7]) == small.files[small.order[7]]


def test_gc_never_removes_a_blob_open_in_another_process(small, tree, two_cached):
    work = two_cached
    holder = (
        "import sys, nydus_hybrid\n"
        "im = nydus_hybrid.Image.open(sys.argv[1], config=sys.argv[2])\n"
        "assert len(im.read(sys.argv[3])) > 0\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(tree.bootstrap), json.dumps(tree.cfg(work)), tree.order[5]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        r = cache_gc(work, max_bytes=0)
        assert r["in_use"] == [tree.blob_id]
        assert r["removed"] == [small.blob_id]
        assert all(f.exists() for f in cache_files(work, tree.blob_id))
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    r = cache_gc(work, max_bytes=0)
    assert r["removed"] == [tree.blob_id] and r["in_use"] == []


def test_gc_age_limit_uses_the_chunk_map_mtime(small, tree, two_cached):
    work = two_cached
    old = time.time() - 2 * 3600
    os.utime(work / f"{tree.blob_id}.chunk_map", (old, old))
    r = cache_gc(work, max_age_secs=3600)
    assert r["removed"] == [tree.blob_id]
    assert r["in_use"] == []
    assert r["kept_bytes"] == allocated(work, small.blob_id) > 0
    assert all(f.exists() for f in cache_files(work, small.blob_id))
    assert not any(f.exists() for f in cache_files(work, tree.blob_id))


def test_gc_size_limit_removes_least_recently_used_first(small, tree, two_cached):
    work = two_cached
    old = time.time() - 600
    os.utime(work / f"{small.blob_id}.chunk_map", (old, old))
    keep = allocated(work, tree.blob_id)
    r = cache_gc(work, max_bytes=keep)
    assert r["removed"] == [small.blob_id]
    assert r["kept_bytes"] == keep
    assert r["freed_bytes"] > 0
    assert cache_gc(work, max_bytes=keep)["removed"] == []  # it fits now


def test_using_a_cache_renews_its_last_use(small, tree, two_cached):
    work = two_cached
    old = time.time() - 2 * 3600
    for img in (small, tree):
        os.utime(work / f"{img.blob_id}.chunk_map", (old, old))
    im = small.open(work)
    assert im.read(small.order[0]) == small.files[small.order[0]]  # opens the cache
    del im
    gc.collect()
    assert os.stat(work / f"{small.blob_id}.chunk_map").st_mtime > time.time() - 600
    r = cache_gc(work, max_age_secs=3600)
    assert r["removed"] == [tree.blob_id]
    assert all(f.exists() for f in cache_files(work, small.blob_id))


def test_gc_of_an_empty_or_foreign_work_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("not a cache file")
    assert cache_gc(tmp_path, max_bytes=0) == {"removed": [], "freed_bytes": 0, "in_use": [], "kept_bytes": 0}
    assert (tmp_path / "notes.txt").exists()
    with pytest.raises(errors.NydusError):
        cache_gc(tmp_path / "missing", max_bytes=0)


# --------------------------------------------------------------------------- 5. configuration


def test_v1_document_opens_and_reads(small, tmp_path):
    cache = tmp_path / "cache"
    doc = {
        "device": {
            "backend": {"type": "localfs", "config": {"dir": str(small.blobs), "readahead": True, "readahead_sec": 10}},
            "cache": {"type": "blobcache", "config": {"work_dir": str(cache), "disable_indexed_map": False}},
        },
        "mode": "direct",
        "amplify_io": 0,
        "id_mapping": [[0, 1000, 65536]],
        "warmup": 0,
        "fs_prefetch": {"enable": False, "prefetch_all": True},
    }
    im = nydus_hybrid.Image.open(small.bootstrap, config=doc)
    for p in small.order:
        assert im.read(p) == small.files[p]
    m = im.metrics()
    assert m["backend"]["backend_type"] == "localfs"
    assert m["blobcache"]["store_path"] == str(cache)
    assert m["blobcache"]["amplified_chunks"] == 0  # amplify_io 0 was honoured
    assert m["blobcache"]["fills"] == small.report.chunks
    assert (cache / f"{small.blob_id}.chunk_map").exists()
    n = nconfig.parse(doc)
    assert n["version"] == 2
    # nydusd's shape: every backend key present, the unused ones null, empty strings ""
    assert n["backend"] == {
        "type": "localfs",
        "localfs": {"blob_file": "", "dir": str(small.blobs), "alt_dirs": []},
        **dict.fromkeys(["localdisk", "oss", "s3", "registry", "http-proxy"]),
    }
    assert n["cache"]["type"] == "blobcache" and n["cache"]["filecache"]["work_dir"] == str(cache)
    assert n["rafs"]["batch_size"] == 0 and n["rafs"]["mode"] == "direct"


def test_v1_blob_file_and_json_text(tree, tmp_path):
    doc = json.dumps(
        {
            "device": {
                "backend": {"type": "localfs", "config": {"blob_file": str(tree.report.blob_path)}},
                "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / "c")}},
            },
            "mode": "cached",
        }
    )
    im = nydus_hybrid.Image.open(tree.bootstrap, config=doc)
    assert im.read("/c/exact") == tree.files["/c/exact"]


def test_v2_unknown_fields_are_ignored(small, tmp_path):
    doc = small.cfg(tmp_path / "cache", amplify=0)
    doc["overlay_future"] = {"x": 1}
    doc["backend"]["localfs"]["readahead"] = True
    doc["backend"]["registry_leftover"] = {"host": 7}
    doc["cache"]["filecache"]["disable_indexed_map"] = True
    doc["cache"]["prefetch_all"] = True
    doc["rafs"]["id_mapping"] = []
    n = nconfig.parse(doc)
    assert n["rafs"]["batch_size"] == 0
    im = nydus_hybrid.Image.open(small.bootstrap, config=doc)
    assert im.read(small.order[3]) == small.files[small.order[3]]


def test_toml_v2_document(small, tmp_path):
    cache = tmp_path / "cache"
    doc = (
        "version = 2\n"
        'id = "toml-image"\n'
        "[backend]\n"
        'type = "localfs"\n'
        "[backend.localfs]\n"
        f'dir = "{small.blobs}"\n'
        "[cache]\n"
        'type = "blobcache"\n'
        "validate = true\n"
        "[cache.filecache]\n"
        f'work_dir = "{cache}"\n'
        "[rafs]\n"
        "batch_size = 0\n"
    )
    n = nconfig.parse(doc)
    assert n["id"] == "toml-image" and n["cache"]["validate"] is True and n["rafs"]["batch_size"] == 0
    im = nydus_hybrid.Image.open(small.bootstrap, config=doc)
    for p in small.order[:20]:
        assert im.read(p) == small.files[p]
    m = bc(im)
    assert m["store_path"] == str(cache)
    assert m["fills"] == 20 and m["amplified_chunks"] == 0


def test_normalised_form_leaves_secrets_out():
    doc = {
        "version": 2,
        "backend": {
            "type": "registry",
            "registry": {
                "host": "r.example",
                "repo": "lib/x",
                "auth": "dXNlcjpzM2NyZXQ=",
                "registry_token": "tok-SECRET",
            },
        },
    }
    text = json.dumps(nconfig.parse(doc))
    assert "dXNlcjpzM2NyZXQ=" not in text and "tok-SECRET" not in text
    s3 = {
        "version": 2,
        "backend": {
            "type": "s3",
            "s3": {
                "endpoint": "e",
                "region": "r",
                "bucket_name": "b",
                "access_key_id": "AKID-SECRET",
                "access_key_secret": "KEY-SECRET",
            },
        },
    }
    text = json.dumps(nconfig.parse(s3))
    assert "AKID-SECRET" not in text and "KEY-SECRET" not in text


def test_v1_enabled_fs_prefetch_is_copied_into_cache_prefetch():
    doc = {
        "device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}},
        "mode": "direct",
        "fs_prefetch": {"enable": True, "threads_count": 3, "merging_size": 4096, "bandwidth_rate": 77},
    }
    n = nconfig.parse(doc)
    want = {"enable": True, "threads": 3, "batch_size": 4096, "bandwidth_limit": 77, "prefetch_all": True}
    assert n["rafs"]["prefetch"] == want
    assert n["cache"]["prefetch"] == want


LOCAL = {"type": "localfs", "localfs": {"dir": "/blobs"}}
BAD_DOCUMENTS = [
    ({"version": 3}, "version: must be 2"),
    ({"version": "2"}, "version: expected an unsigned integer, got a string"),
    ({"version": 2, "backend": {"type": "registry", "registry": {"repo": "x"}}}, "backend.registry.host: required"),
    ({"version": 2, "backend": {"type": "registry", "registry": {"host": "h"}}}, "backend.registry.repo: required"),
    ({"version": 2, "backend": {"localfs": {"dir": "/b"}}}, "backend.type: required"),
    ({"version": 2, "backend": {"type": "s3"}}, "backend.s3: required"),
    (
        {"version": 2, "backend": {"type": "s3", "s3": {"endpoint": "e", "bucket_name": "b"}}},
        "backend.s3.region: required",
    ),
    (
        {"version": 2, "backend": {"type": "localfs", "localfs": {}}},
        "backend.localfs: one of blob_file or dir is required",
    ),
    (
        {"version": 2, "backend": {"type": "localfs", "localfs": {"dir": 5}}},
        "backend.localfs.dir: expected a string, got a number",
    ),
    (
        {"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b", "alt_dirs": ["/c", 1]}}},
        "backend.localfs.alt_dirs[1]",
    ),
    ({"version": 2, "backend": {"type": "http-proxy", "http-proxy": {"addr": "tcp://x"}}}, "backend.http-proxy.addr"),
    (
        {"version": 2, "backend": {"type": "registry", "registry": {"host": "h", "repo": "r", "timeout": 0}}},
        "backend.registry.timeout",
    ),
    (
        {"version": 2, "backend": {"type": "registry", "registry": {"host": "h", "repo": "r", "auth": "%%%"}}},
        "backend.registry.auth: not base64",
    ),
    (
        {
            "version": 2,
            "backend": {"type": "registry", "registry": {"host": "h", "repo": "r", "mirrors": [{"host": "ftp://m"}]}},
        },
        "backend.registry.mirrors[0].host",
    ),
    (
        {
            "version": 2,
            "backend": {"type": "registry", "registry": {"host": "h", "repo": "r", "proxy": {"fallback": "no"}}},
        },
        "backend.registry.proxy.fallback: expected a boolean, got a string",
    ),
    ({"version": 2, "backend": LOCAL, "cache": {"type": "blobcache"}}, "cache.filecache: required"),
    ({"version": 2, "backend": LOCAL, "cache": {"type": "memcache"}}, "cache.type"),
    (
        {
            "version": 2,
            "backend": LOCAL,
            "cache": {"type": "blobcache", "filecache": {"work_dir": "/w"}, "validate": "yes"},
        },
        "cache.validate: expected a boolean, got a string",
    ),
    (
        {
            "version": 2,
            "backend": LOCAL,
            "cache": {"type": "blobcache", "filecache": {"work_dir": "/w"}, "prefetch": {"threads": 2}},
        },
        "cache.prefetch.enable: required",
    ),
    (
        {
            "version": 2,
            "cache": {"type": "blobcache", "filecache": {"work_dir": "/w"}, "prefetch": {"enable": True, "threads": 0}},
        },
        "cache.prefetch.threads",
    ),
    ({"version": 2, "rafs": {"batch_size": "big"}}, "rafs.batch_size: expected an unsigned integer, got a string"),
    ({"version": 2, "rafs": {"batch_size": -1}}, "rafs.batch_size: expected an unsigned integer, got a number"),
    ({"version": 2, "rafs": {"batch_size": 257 * MiB}}, "rafs.batch_size: 269484032 is above the limit"),
    ({"version": 2, "rafs": {"mode": "lazy"}}, "rafs.mode"),
    ({"version": 2, "rafs": "fast"}, "rafs: expected an object, got a string"),
    ({"device": {"backend": {"type": "localfs"}}, "mode": "direct"}, "device.backend.config: required"),
    ({"device": {"cache": {}}, "mode": "direct"}, "device.backend: required"),
    (
        {"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}}, "mode": "direct", "amplify_io": "1M"},
        "amplify_io: expected an unsigned integer, got a string",
    ),
    (
        {
            "device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}},
            "mode": "direct",
            "fs_prefetch": {"threads_count": 0},
        },
        "fs_prefetch.threads_count",
    ),
    (
        {"device": {"backend": {"type": "http-proxy", "config": {"addr": "http://x"}}}, "mode": "direct"},
        "device.backend.type",
    ),
    (
        {
            "device": {
                "backend": {"type": "localfs", "config": {"dir": "/b"}},
                "cache": {"type": "blobcache", "config": []},
            },
            "mode": "direct",
        },
        "device.cache.config: expected an object, got an array",
    ),
    # an unknown backend type names the field by its path like every other error
    ({"version": 2, "backend": {"type": "ftp", "ftp": {}}}, "backend.type"),
    ({"device": {"backend": {"type": "ftp", "config": {}}}, "mode": "direct"}, "device.backend.type"),
]


@pytest.mark.parametrize(
    "doc,field", BAD_DOCUMENTS, ids=[f"{i:02d}-{f.split(':')[0]}" for i, (_, f) in enumerate(BAD_DOCUMENTS)]
)
def test_invalid_documents_name_the_field(doc, field):
    with pytest.raises(errors.ConfigError) as ei:
        nconfig.parse(doc)
    assert field in str(ei.value), str(ei.value)
    assert ei.value.errno == 22


@pytest.mark.parametrize("text", ["", "{oops", "[1, 2]", "3", "version = 'two'\n"])
def test_documents_that_are_not_config_objects(text):
    with pytest.raises(errors.ConfigError):
        nconfig.parse(text)


def test_invalid_config_fails_open_with_the_same_error(small):
    with pytest.raises(errors.ConfigError, match=r"rafs\.batch_size"):
        nydus_hybrid.Image.open(small.bootstrap, config={"version": 2, "backend": LOCAL, "rafs": {"batch_size": True}})


# Random JSON values at random places of valid documents: parse() either succeeds (and its
# normalised output parses to itself) or raises ConfigError / UnsupportedError (oss,
# localdisk), nothing else.

V2_BASE = {
    "version": 2,
    "id": "x",
    "backend": {
        "type": "registry",
        "registry": {
            "host": "h",
            "repo": "r",
            "scheme": "http",
            "proxy": {"fallback": False},
            "mirrors": [{"host": "http://m", "headers": {"a": "b"}}],
        },
    },
    "cache": {
        "type": "blobcache",
        "filecache": {"work_dir": "/w"},
        "validate": False,
        "prefetch": {"enable": True, "threads": 2, "batch_size": 4096, "bandwidth_limit": 0},
    },
    "rafs": {"mode": "direct", "batch_size": 0, "validate": False, "prefetch": {"enable": False}},
}
V1_BASE = {
    "device": {
        "id": "/s",
        "backend": {"type": "localfs", "config": {"dir": "/b", "alt_dirs": ["/c"]}},
        "cache": {"type": "blobcache", "config": {"work_dir": "/w"}},
    },
    "mode": "direct",
    "amplify_io": 1024,
    "digest_validate": False,
    "fs_prefetch": {"enable": True, "threads_count": 4, "merging_size": 65536, "bandwidth_rate": 0},
}
V2_PATHS = [
    ("version",),
    ("id",),
    ("backend",),
    ("backend", "type"),
    ("backend", "registry"),
    ("backend", "registry", "host"),
    ("backend", "registry", "repo"),
    ("backend", "registry", "auth"),
    ("backend", "registry", "timeout"),
    ("backend", "registry", "retry_limit"),
    ("backend", "registry", "proxy"),
    ("backend", "registry", "proxy", "url"),
    ("backend", "registry", "proxy", "check_interval"),
    ("backend", "registry", "mirrors"),
    ("backend", "registry", "ca_cert_files"),
    ("backend", "localfs"),
    ("backend", "localfs", "dir"),
    ("backend", "s3"),
    ("backend", "s3", "region"),
    ("backend", "http-proxy"),
    ("backend", "http-proxy", "addr"),
    ("cache",),
    ("cache", "type"),
    ("cache", "filecache"),
    ("cache", "filecache", "work_dir"),
    ("cache", "fscache"),
    ("cache", "validate"),
    ("cache", "prefetch"),
    ("cache", "prefetch", "enable"),
    ("cache", "prefetch", "threads"),
    ("cache", "prefetch", "batch_size"),
    ("cache", "prefetch", "bandwidth_limit"),
    ("rafs",),
    ("rafs", "mode"),
    ("rafs", "batch_size"),
    ("rafs", "prefetch"),
    ("rafs", "prefetch", "enable"),
    ("rafs", "validate"),
]
V1_PATHS = [
    ("device",),
    ("device", "id"),
    ("device", "backend"),
    ("device", "backend", "type"),
    ("device", "backend", "config"),
    ("device", "backend", "config", "dir"),
    ("device", "backend", "config", "blob_file"),
    ("device", "cache"),
    ("device", "cache", "type"),
    ("device", "cache", "config"),
    ("device", "cache", "config", "work_dir"),
    ("mode",),
    ("amplify_io",),
    ("digest_validate",),
    ("fs_prefetch",),
    ("fs_prefetch", "threads_count"),
    ("fs_prefetch", "merging_size"),
    ("fs_prefetch", "bandwidth_rate"),
    ("fs_prefetch", "prefetch_all"),
]
WORDS = [
    "",
    "2",
    "localfs",
    "registry",
    "s3",
    "oss",
    "http-proxy",
    "localdisk",
    "blobcache",
    "filecache",
    "fscache",
    "dummycache",
    "direct",
    "cached",
    "http",
    "https",
    "/tmp",
    "http://x",
    "https://m/",
    "dXNlcjpwYXNz",
    "x:y",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, 2, 1024, 3600, 3601, 256 * MiB, 256 * MiB + 1, 2**64 - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(WORDS),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(WORDS[2:]) | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _put(doc: Dict[str, Any], path: Tuple[Any, ...], value) -> None:
    node = doc
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), v1=st.booleans())
def test_random_values_at_config_paths_never_crash(data, v1):
    doc = json.loads(json.dumps(V1_BASE if v1 else V2_BASE))
    paths = V1_PATHS if v1 else V2_PATHS
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(
            st.sampled_from(paths)
            | st.tuples(st.sampled_from(paths), st.text(max_size=5)).map(lambda t: t[0] + (t[1],))
        )
        _put(doc, path, data.draw(json_values))
    try:
        out = nconfig.parse(doc)
    except (errors.ConfigError, errors.UnsupportedError) as e:
        assert str(e)
        return
    assert isinstance(out, dict) and out["version"] == 2
    assert nconfig.parse(out) == out


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_random_text_documents_never_crash(text):
    try:
        out = nconfig.parse(text)
    except (errors.ConfigError, errors.UnsupportedError):
        return
    assert out["version"] == 2


# --------------------------------------------------------------------------- 6. metrics shapes

BACKEND_U64 = [
    "read_count",
    "read_errors",
    "read_amount_total",
    "read_cumulative_latency_millis_total",
    "requests_total",
]
BACKEND_U64_8 = ["read_cumulative_latency_millis_dist", "read_count_block_size_dist"]
CACHE_U64 = [
    "partial_hits",
    "whole_hits",
    "total",
    "entries_count",
    "prefetch_data_amount",
    "prefetch_requests_count",
    "prefetch_unmerged_chunks",
    "prefetch_cumulative_time_millis",
    "prefetch_workers",
    "prefetch_begin_time_secs",
    "prefetch_begin_time_millis",
    "prefetch_end_time_secs",
    "prefetch_end_time_millis",
    "buffered_backend_size",
    "chunk_hits",
    "chunk_misses",
    "fills",
    "amplified_chunks",
    "validate_failures",
]


def _u64(v) -> bool:
    return type(v) is int and 0 <= v < 2**64


def assert_metrics_shape(m: Dict[str, Any], backend_type: str = "localfs") -> None:
    assert set(m) == {"backend", "blobcache"}
    b, c = m["backend"], m["blobcache"]
    # §8.4
    assert b["backend_type"] == backend_type
    for k in BACKEND_U64:
        assert _u64(b[k]), (k, b[k])
    for k in BACKEND_U64_8:
        assert isinstance(b[k], list) and len(b[k]) == 8 and all(map(_u64, b[k])), (k, b[k])
    lat = b["read_latency_sizes_dist"]
    assert isinstance(lat, list) and len(lat) == 8
    assert all(isinstance(row, list) and len(row) == 8 and all(map(_u64, row)) for row in lat), lat
    assert sum(b["read_count_block_size_dist"]) == b["read_count"]
    assert [sum(row) for row in lat] == b["read_count_block_size_dist"]
    assert sum(b["read_cumulative_latency_millis_dist"]) == b["read_cumulative_latency_millis_total"]
    # §8.5
    for k in CACHE_U64:
        assert _u64(c[k]), (k, c[k])
    assert isinstance(c["store_path"], str)
    assert isinstance(c["underlying_files"], list) and all(isinstance(f, str) for f in c["underlying_files"])
    assert all(f.endswith(".blob.data") for f in c["underlying_files"])
    assert c["entries_count"] == len(c["underlying_files"])
    assert type(c["data_all_ready"]) is bool
    assert c["prefetch_begin_time_millis"] < 1000 and c["prefetch_end_time_millis"] < 1000
    assert c["whole_hits"] + c["partial_hits"] <= c["total"]


def test_metrics_shape_and_counts(tree, tmp_path):
    cache = tmp_path / "cache"
    im = tree.open(cache, amplify=0)
    assert_metrics_shape(im.metrics())
    assert im.metrics()["blobcache"]["underlying_files"] == [] and im.metrics()["backend"]["read_count"] == 0
    assert im.read("/top0") == tree.files["/top0"]  # loads blob meta too
    m0 = im.metrics()
    assert_metrics_shape(m0)
    assert m0["blobcache"]["underlying_files"] == [f"{tree.blob_id}.blob.data"]
    assert m0["blobcache"]["store_path"] == str(cache)
    # one chunk of at least 64 KiB stored bytes: one read in the 64K-128K bucket
    data = tree.files["/c/exact"]
    assert im.read("/c/exact", 0, 10) == data[:10]
    m1 = im.metrics()
    assert_metrics_shape(m1)
    d = [
        x - y for x, y in zip(m1["backend"]["read_count_block_size_dist"], m0["backend"]["read_count_block_size_dist"])
    ]
    assert d == [0, 0, 0, 0, 1, 0, 0, 0]
    assert m1["backend"]["read_amount_total"] - m0["backend"]["read_amount_total"] >= SMALL_CHUNK
    # the rest of the file: chunk 0 is a hit, chunk 1 a miss -> a partial hit; then a whole hit
    assert im.read("/c/exact") == data
    assert im.read("/c/exact") == data
    m2 = im.metrics()["blobcache"]
    assert m2["total"] - m1["blobcache"]["total"] == 2
    assert m2["partial_hits"] - m1["blobcache"]["partial_hits"] == 1
    assert m2["whole_hits"] - m1["blobcache"]["whole_hits"] == 1
    assert im.prefetch(all=True, threads=2).wait() == []
    m3 = im.metrics()
    assert_metrics_shape(m3)
    assert m3["blobcache"]["data_all_ready"] is True and m3["blobcache"]["prefetch_workers"] == 2


def test_metrics_shape_without_a_cache(tree):
    im = nydus_hybrid.Image.open(tree.bootstrap, tree.blobs)
    assert im.read("/b/f01") == tree.files["/b/f01"]
    m = im.metrics()
    assert_metrics_shape(m)
    assert m["backend"]["read_count"] > 0
    assert m["blobcache"]["store_path"] == "" and m["blobcache"]["underlying_files"] == []
    assert m["blobcache"]["data_all_ready"] is False
