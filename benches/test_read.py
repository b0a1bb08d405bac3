"""Reader API throughput against plain file reads of the same source files, page cache
warm for both (the corpus is read once by the `corpus` fixture, blob and bootstrap by
`built_image`).

* sequential: every file in 1 MiB blocks: Image.read (verify on / off, and with the files
  spread over 2 threads, since reads release the GIL) vs open().read(1 MiB);
* random: 4 KiB reads at 4 KiB-aligned offsets, files picked by size: Image.read vs
  os.pread on descriptors opened beforehand. Image.read resolves the path on every call.
"""

from __future__ import annotations

import os

import pytest

from benchlib.env import bench_rounds
from benchlib.reads import (
    SourceFds,
    random_reads,
    read_image_random,
    read_image_sequential,
    read_image_threads,
    read_source_random,
    read_source_sequential,
)
from benchlib.report import MiB

SEQ_ORDER = ["source open().read", "Image.read", "Image.read verify=False", "Image.read 2 threads"]
RND_ORDER = ["source os.pread", "Image.read"]
RANDOM_READS = int(os.environ.get("NYDUS_BENCH_RANDOM_READS", "1000"))


def _rounds() -> int:
    return bench_rounds()


def _open(built_image, verify=True):
    import nydus_hybrid

    boot, blobs, _ = built_image
    return nydus_hybrid.Image.open(boot, blobs, verify=verify)


def _stats(benchmark):
    # median seconds per round as pytest-benchmark measured it
    return benchmark.stats.stats.median


@pytest.mark.parametrize("reader", SEQ_ORDER)
def test_read_sequential(benchmark, corpus, built_image, results, reader):
    benchmark.group = f"read: all files in 1 MiB blocks ({corpus.mib:.0f} MiB)"
    if reader == "source open().read":
        fn = lambda: read_source_sequential(corpus.root, corpus.files)  # noqa: E731
    elif reader == "Image.read":
        img = _open(built_image)
        fn = lambda: read_image_sequential(img, corpus.files)  # noqa: E731
    elif reader == "Image.read verify=False":
        img = _open(built_image, verify=False)
        fn = lambda: read_image_sequential(img, corpus.files)  # noqa: E731
    else:
        img = _open(built_image)
        fn = lambda: read_image_threads(img, corpus.files, 2)  # noqa: E731
    n = benchmark.pedantic(fn, rounds=_rounds(), iterations=1, warmup_rounds=1)
    assert n == corpus.total_bytes
    mib_s = n / MiB / _stats(benchmark)
    results[("seq", reader)] = mib_s
    benchmark.extra_info["throughput_mib_s"] = round(mib_s, 1)
    if reader != SEQ_ORDER[0]:
        base = results.get(("seq", SEQ_ORDER[0]))
        if base is None:
            import time

            t = time.perf_counter()
            read_source_sequential(corpus.root, corpus.files)
            base = corpus.total_bytes / MiB / (time.perf_counter() - t)
        benchmark.extra_info["source_throughput_mib_s"] = round(base, 1)
        benchmark.extra_info["ratio_vs_source"] = round(mib_s / base, 3)


@pytest.mark.parametrize("reader", RND_ORDER)
def test_read_random_4k(benchmark, corpus, built_image, results, reader):
    benchmark.group = f"read: {RANDOM_READS} random 4 KiB reads"
    pairs = random_reads(corpus.files, RANDOM_READS)
    fds = None
    if reader == "source os.pread":
        fds = SourceFds(corpus.root, pairs)
        fn = lambda: read_source_random(fds, pairs)  # noqa: E731
    else:
        img = _open(built_image)
        fn = lambda: read_image_random(img, pairs)  # noqa: E731
    try:
        n = benchmark.pedantic(fn, rounds=_rounds(), iterations=1, warmup_rounds=1)
    finally:
        if fds:
            fds.close()
    assert n == 4096 * RANDOM_READS or n > 0
    per_s = RANDOM_READS / _stats(benchmark)
    results[("rnd", reader)] = per_s
    benchmark.extra_info["reads_per_s"] = round(per_s)
    benchmark.extra_info["throughput_mib_s"] = round(n / MiB / _stats(benchmark), 2)
    if reader != RND_ORDER[0] and ("rnd", RND_ORDER[0]) in results:
        benchmark.extra_info["ratio_vs_pread"] = round(per_s / results[("rnd", RND_ORDER[0])], 4)
