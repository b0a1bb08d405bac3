"""Fixtures for the pytest-benchmark suite: `python -m pytest benches --benchmark-only`.

The corpus and big file are generated once (deterministically) under NYDUS_BENCH_DIR
(default $TMPDIR/nydus-bench) and reused; outputs go to pytest's tmp directory.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: tests.helpers
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benches/: benchlib, fusebench

from benchlib import env  # as a module: the hook below takes an argument called machine_info
from benchlib.corpus import Corpus, ensure_bigfile, ensure_corpus
from benchlib.measure import rss_method
from benchlib.pagecache import warm_page_cache


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["nydus_bench"] = dict(env.machine_info(), **env.build_identity())


def pytest_report_header(config):
    m = env.machine_info()
    b = env.build_identity()
    return (
        f"nydus benches: corpus {env.bench_mb()} MiB, big file {env.bigfile_gb()} GiB, "
        f"{env.bench_rounds()} rounds; nproc {m['nproc']}, kernel {m['kernel']}; "
        f"peak RSS via {rss_method()}; nydus-hybrid git {b.get('git_head')}, "
        f"_core sha256 {b.get('core_sha256')}"
    )


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    c = ensure_corpus(log=lambda s: print(s, file=sys.stderr))
    warm_page_cache(c.root)
    return c


@pytest.fixture(scope="session")
def bigfile() -> Corpus:
    c = ensure_bigfile(log=lambda s: print(s, file=sys.stderr))
    warm_page_cache(c.root)
    return c


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("nydus-bench-out"))


@pytest.fixture(scope="session")
def results() -> dict:
    """Summaries measured earlier in this session, so later tests can report ratios."""
    return {}


@pytest.fixture(scope="session")
def built_image(corpus, workdir):
    """The corpus built with zstd in-process; blob and bootstrap read once (page cache warm)."""
    import nydus_hybrid

    out = os.path.join(workdir, "read-image")
    boot, blobs = os.path.join(out, "image.boot"), os.path.join(out, "blobs")
    report = nydus_hybrid.build(corpus.root, boot, blobs, compressor="zstd", progress=False)
    warm_page_cache(blobs, extra=[boot])
    return boot, blobs, report
