"""Reads through the registry backend, against a real docker-registry on 127.0.0.1
(tests/helpers/servers.py; the blob is pushed with our own `push_blob`), side by side with curl.

* cold: every file of an incompressible image in 1 MiB `Image.read`s with an empty cache
  dir each round (`rafs.batch_size` = amplify_io 0, 1 MiB, 4 MiB; 1 or 4 threads) vs curl
  fetching the whole blob (the baseline) and the same blob in 1 MiB / 4 MiB Range GETs
  (one after another, or 4 at a time);
* warm: the same files again once the cache is full (cache hits) vs plain
  `open().readinto` of the source files in 1 MiB blocks, page cache warm for both;
* partial: 5% of the files of a many-file image (4 KiB-2 MiB each), read whole, cold,
  with batch_size 0 / 1 MiB / 4 MiB: backend requests and bytes (`Image.metrics()`), the
  registry's own count of blob GETs (its access log), wall time and read amplification.

Figures go to each benchmark's `extra_info`; nothing about speed is asserted.
"""

from __future__ import annotations

import os
import shutil
import statistics

import pytest

from benchlib.corpus import ensure_partial_tree, ensure_storage_tree
from benchlib.env import bench_rounds, partial_fraction
from benchlib.pagecache import warm_page_cache
from benchlib.reads import pick_fraction, read_files_readinto, read_image_blocks_parallel, read_image_sequential
from benchlib.registry import (
    COLD_BASELINE,
    COLD_VARIANTS,
    PARTIAL_BATCHES,
    Fetch,
    build_and_push,
    cold_fetch,
    curl_fetch,
    image_fetch,
    partial_fetch,
    registry_config,
    start_registry,
    storage_missing,
)
from benchlib.report import MiB

_missing = storage_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

COLD = {v.name: v for v in COLD_VARIANTS}
WARM_ORDER = ["source open().readinto", "Image.read cache hit", "Image.read cache hit, 2 threads"]


def _median(benchmark) -> float:
    # median seconds per round as pytest-benchmark measured it
    return benchmark.stats.stats.median


@pytest.fixture(scope="module")
def registry():
    """docker-registry with its storage in a private temp dir (removed at teardown)."""
    reg = start_registry()
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def scratch(workdir):
    """`scratch(name)`: a path under the session's workdir, removed when the module is done
    (images and caches here take hundreds of MiB; pytest keeps old tmp dirs around)."""
    made = []

    def make(name: str) -> str:
        made.append(os.path.join(workdir, name))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cold_image(registry, scratch):
    tree = ensure_storage_tree()
    warm_page_cache(tree.root)
    return build_and_push(tree, scratch("storage-image"), registry)


@pytest.fixture(scope="module")
def partial_image(registry, scratch):
    tree = ensure_partial_tree()
    return build_and_push(tree, scratch("partial-image"), registry)


def _fetch_info(f: Fetch) -> dict:
    info = {"requests": f.requests, "fetched_bytes": f.fetched, "client_cpu_s": round(f.cpu, 3)}
    if f.reg_cpu is not None:
        info["registry_cpu_s"] = round(f.reg_cpu, 3)
    return info


@pytest.mark.parametrize("variant", list(COLD))
def test_registry_cold_read(benchmark, registry, cold_image, scratch, results, variant):
    v = COLD[variant]
    benchmark.group = f"storage: cold read of {cold_image.tree.mib:.0f} MiB from docker-registry"
    cache = scratch("storage-cache")
    runs = []
    benchmark.pedantic(
        lambda: runs.append(cold_fetch(v, registry, cold_image, cache)),
        rounds=bench_rounds(),
        iterations=1,
        warmup_rounds=1,
    )
    runs = runs[1:]  # without the warm-up round
    rate = (
        cold_image.blob_size / MiB / _median(benchmark)
        if v.kind == "curl"
        else cold_image.tree.total_bytes / MiB / _median(benchmark)
    )
    results[("cold", variant)] = rate
    benchmark.extra_info.update(_fetch_info(runs[-1]))
    benchmark.extra_info["throughput_mib_s"] = round(rate, 1)
    benchmark.extra_info["client_cpu_s_median"] = round(statistics.median(r.cpu for r in runs), 3)
    if all(r.reg_cpu is not None for r in runs):
        benchmark.extra_info["registry_cpu_s_median"] = round(statistics.median(r.reg_cpu for r in runs), 3)
    if variant != COLD_BASELINE:
        base = results.get(("cold", COLD_BASELINE))
        if base is None:
            base = statistics.median(curl_fetch(registry, cold_image).mib_s for _ in range(3))
        benchmark.extra_info["curl_whole_blob_mib_s"] = round(base, 1)
        benchmark.extra_info["ratio_vs_curl_whole_blob"] = round(rate / base, 3)
    if v.peer and ("cold", v.peer) in results:
        benchmark.extra_info["ratio_vs_curl_same_requests"] = round(rate / results[("cold", v.peer)], 3)
    if v.kind == "image":
        if v.threads == 1:
            benchmark.extra_info["wall_share_in_backend_requests"] = round(
                statistics.median(r.backend_share for r in runs), 3
            )
        benchmark.extra_info["blobcache"] = {
            k: runs[-1].metrics["blobcache"][k] for k in ("chunk_misses", "amplified_chunks", "fills")
        }
        # every chunk fetched (metadata aside)
        assert runs[-1].fetched >= cold_image.tree.total_bytes


@pytest.fixture(scope="module")
def warm_image(registry, cold_image, scratch):
    """An Image on a full cache (filled by one cold read), opened afresh: no backend I/O."""
    import nydus_hybrid

    cache = scratch("storage-warm-cache")
    image_fetch(registry, cold_image, cache)
    im = nydus_hybrid.Image.open(cold_image.boot, config=registry_config(registry, cache))
    yield im
    del im


@pytest.mark.parametrize("reader", WARM_ORDER)
def test_warm_cache_read(benchmark, cold_image, warm_image, results, reader):
    tree = cold_image.tree
    benchmark.group = f"storage: warm (cache-hit) read of {tree.mib:.0f} MiB in 1 MiB blocks"
    if reader == "source open().readinto":
        fn = lambda: read_files_readinto(tree.root, tree.files)  # noqa: E731
    elif reader == "Image.read cache hit":
        fn = lambda: read_image_sequential(warm_image, tree.files)  # noqa: E731
    else:
        fn = lambda: read_image_blocks_parallel(warm_image, tree.files, 2)  # noqa: E731
    n = benchmark.pedantic(fn, rounds=bench_rounds(), iterations=1, warmup_rounds=1)
    assert n == tree.total_bytes
    rate = n / MiB / _median(benchmark)
    results[("warm", reader)] = rate
    benchmark.extra_info["throughput_mib_s"] = round(rate, 1)
    if reader != WARM_ORDER[0]:
        assert warm_image.metrics()["backend"]["requests_total"] == 0, "a cache hit went to the registry"
        base = results.get(("warm", WARM_ORDER[0]))
        if base is None:
            import time

            t = time.perf_counter()
            read_files_readinto(tree.root, tree.files)
            base = tree.total_bytes / MiB / (time.perf_counter() - t)
        benchmark.extra_info["source_mib_s"] = round(base, 1)
        benchmark.extra_info["ratio_vs_source"] = round(rate / base, 3)


@pytest.mark.parametrize("batch_size", PARTIAL_BATCHES, ids=lambda b: f"batch{b // 1024}K")
def test_partial_read_requests(benchmark, registry, partial_image, scratch, batch_size):
    frac = partial_fraction()
    picks = pick_fraction(partial_image.tree.files, frac)
    needed = sum(s for _, s in picks)
    benchmark.group = (
        f"storage: {len(picks)} of {len(partial_image.tree.files)} files "
        f"({frac:.0%}) of a {partial_image.tree.mib:.0f} MiB image, cold"
    )
    cache = scratch("partial-cache")
    runs = []
    benchmark.pedantic(
        lambda: runs.append(partial_fetch(registry, partial_image, picks, cache, batch_size)),
        rounds=bench_rounds(),
        iterations=1,
        warmup_rounds=0,
    )
    f, gets, heads = runs[-1]
    b = f.metrics["backend"]
    benchmark.extra_info.update(
        {
            "files_read": len(picks),
            "files_in_image": len(partial_image.tree.files),
            "bytes_needed": needed,
            "image_bytes": partial_image.tree.total_bytes,
            "backend_read_count": b["read_count"],
            "backend_requests_total": b["requests_total"],
            "backend_read_amount_total": b["read_amount_total"],
            "registry_blob_gets": gets,
            "registry_blob_heads": heads,
            "read_amplification": round(b["read_amount_total"] / needed, 3),
            "blob_bytes": partial_image.blob_size,
            "fetched_vs_whole_blob": round(b["read_amount_total"] / partial_image.blob_size, 4),
            "amplified_chunks": f.metrics["blobcache"]["amplified_chunks"],
            "chunk_misses": f.metrics["blobcache"]["chunk_misses"],
            "wall_s_median": round(_median(benchmark), 3),
        }
    )
    # the request counts of one cold pass do not depend on timing
    assert len({(r[0].metrics["backend"]["read_count"], r[0].fetched) for r in runs}) == 1
