"""fscache reads (the singleton daemon, EROFS over fscache through the cachefiles
**simulator**, which this kernel needs: docs/fscache-simulator.md), side by side with the
kernel's own EROFS reading the same image from local, already-uncompressed files (the
bootstrap plus the flattened blob as `device=`): the ceiling, since no fetch, decode or
round trip is involved.

Rows, each reading the whole bench corpus tree through its mount (os.walk, 1 MiB reads)
after dropping the page cache:

* `kernel-erofs`: the baseline;
* `fscache-cold`: a fresh fsid each round, so every data range is a READ the daemon fills
  (localfs backend, zstd chunks decoded, written through the anon fd);
* `fscache-warm`: the same mount again: the cache files hold everything, no READ is sent.

MiB/s and the ratio to the baseline go to extra_info; nothing about speed is asserted.
NYDUS_BENCH_FSCACHE_ROUNDS rounds (3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from benchlib.pagecache import drop_caches
from benchlib.report import MiB
from nydus_hybrid.mounts import erofs as kmount
from nydus_hybrid.mounts import fscache as fscache_mount

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not kmount.erofs_available(), reason="needs root and file-backed EROFS mounts"
)
ROUNDS = int(os.environ.get("NYDUS_BENCH_FSCACHE_ROUNDS", "3"))
DAEMON = [sys.executable, "-m", "nydus_hybrid.daemon"]


def read_tree(root: str) -> int:
    total = 0
    for d, _, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            if os.path.islink(p):
                continue
            with open(p, "rb", buffering=0) as f:
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    total += len(b)
    return total


@pytest.fixture(scope="module")
def image(corpus, tmp_path_factory):
    import nydus_hybrid

    base = tmp_path_factory.mktemp("fscache-bench")
    nydus_hybrid.build(corpus.root, str(base / "boot"), str(base / "blobs"), progress=False)
    img = nydus_hybrid.Image.open(base / "boot", base / "blobs")
    assert len(img.blob_ids) == 1
    img.export_flat_blob(base / "flat")
    return base


@pytest.fixture(scope="module")
def singleton(image):
    """The simulator and one singleton daemon bound to it."""
    sock = str(image / "cf.sock")
    logs = open(image / "procs.log", "ab")
    sim = subprocess.Popen(
        [sys.executable, "-m", "nydus_hybrid.sim.cachefiles", "--socket", sock, "--log-level", "warning"],
        stdout=logs,
        stderr=logs,
    )
    while not os.path.exists(sock + ".ctl"):
        time.sleep(0.02)
    env = dict(os.environ, NYDUS_HYBRID_CACHEFILES=f"sim:{sock}")
    (image / "cache").mkdir(exist_ok=True)
    api = str(image / "api.sock")
    d = subprocess.Popen(
        [
            *DAEMON,
            "singleton",
            "--fscache",
            str(image / "cache"),
            "--fscache-threads",
            "4",
            "--apisock",
            api,
            "--log-level",
            "warn",
        ],
        stdout=logs,
        stderr=logs,
        env=env,
    )
    while not os.path.exists(api):
        time.sleep(0.02)
    os.environ["NYDUS_HYBRID_CACHEFILES"] = f"sim:{sock}"
    yield api
    os.environ.pop("NYDUS_HYBRID_CACHEFILES", None)
    for p in (d, sim):
        p.terminate()
        p.wait(10)
    logs.close()


def bind(api: str, image, fid: str) -> None:
    from nydus_hybrid.client import DaemonClient

    (image / "work" / fid).mkdir(parents=True, exist_ok=True)
    entry = {
        "type": "bootstrap",
        "id": fid,
        "domain_id": fid,
        "config": {
            "id": fid,
            "backend_type": "localfs",
            "backend_config": {"dir": str(image / "blobs")},
            "cache_type": "fscache",
            "cache_config": {"work_dir": str(image / "work" / fid)},
            "metadata_path": str(image / "boot"),
        },
    }
    c = DaemonClient(api)
    try:
        c.put("/api/v2/blobs", entry)
    finally:
        c.close()


def measure(benchmark, results, row, image, mount, umount, corpus_bytes, before_each=drop_caches):
    times = []

    def once():
        target = str(image / f"mnt-{row}-{len(times)}")
        os.makedirs(target, exist_ok=True)
        mount(target)
        try:
            before_each()
            t = time.perf_counter()
            n = read_tree(target)
            times.append(time.perf_counter() - t)
            assert n == corpus_bytes
        finally:
            umount(target)

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
    mibs = [corpus_bytes / t / MiB for t in times]
    results[row] = sorted(mibs)[len(mibs) // 2]
    benchmark.extra_info.update(row=row, mib_s_median=round(results[row], 1), seconds=[round(t, 3) for t in times])
    if "kernel-erofs" in results and row != "kernel-erofs":
        benchmark.extra_info["ratio_to_kernel_erofs"] = round(results[row] / results["kernel-erofs"], 3)
    print(json.dumps(benchmark.extra_info), file=sys.stderr)


@pytest.fixture(scope="module")
def results():
    return {}


@pytest.fixture(scope="module")
def corpus_bytes(corpus):
    return read_tree(corpus.root)


def test_kernel_erofs(benchmark, image, results, corpus_bytes):
    benchmark.group = "fscache: whole-tree read, page cache dropped"
    measure(
        benchmark,
        results,
        "kernel-erofs",
        image,
        lambda t: kmount.mount_erofs(str(image / "boot"), t, [str(image / "flat")]),
        kmount.umount,
        corpus_bytes,
    )


def test_fscache_cold(benchmark, image, singleton, results, corpus_bytes):
    benchmark.group = "fscache: whole-tree read, page cache dropped"
    n = iter(range(1000))

    def mount(target):
        fid = f"cold{next(n)}"
        bind(singleton, image, fid)
        fscache_mount.mount_erofs_fscache(target, fid)

    measure(benchmark, results, "fscache-cold", image, mount, fscache_mount.umount_erofs_fscache, corpus_bytes)
    c = fscache_mount.sim_request(os.environ["NYDUS_HYBRID_CACHEFILES"][4:], {"op": "status"})["counters"]
    benchmark.extra_info.update(sim_reads_per_round=c["reads"] // ROUNDS, sim_opens_per_round=c["opens"] // ROUNDS)
    print(json.dumps({"cold_counters": c}), file=sys.stderr)


def test_fscache_warm(benchmark, image, singleton, results, corpus_bytes):
    benchmark.group = "fscache: whole-tree read, page cache dropped"
    bind(singleton, image, "warm")
    first = str(image / "mnt-warm-fill")
    os.makedirs(first, exist_ok=True)
    fscache_mount.mount_erofs_fscache(first, "warm")
    read_tree(first)  # fills the cache files
    fscache_mount.umount_erofs_fscache(first)
    measure(
        benchmark,
        results,
        "fscache-warm",
        image,
        lambda t: fscache_mount.mount_erofs_fscache(t, "warm"),
        fscache_mount.umount_erofs_fscache,
        corpus_bytes,
    )
