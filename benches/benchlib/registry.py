"""Lazy reads through the registry backend against a real docker-registry on 127.0.0.1
(tests/helpers/servers.py), with curl fetching the same blob as the baseline: start the
registry, build and push an image, one timed cold fetch (ours or curl's, `Fetch`), the cold
variants and the partial-read batches compared. Inputs are incompressible, so stored
bytes = file bytes and the byte counts compare directly."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from benchlib.corpus import Corpus, fresh_dir
from benchlib.measure import proc_cpu_s
from benchlib.reads import read_image_blocks_parallel, read_image_sequential
from benchlib.report import MiB

REGISTRY_BIN = "/usr/bin/docker-registry"
REGISTRY_REPO = "bench/x"


def storage_missing() -> Optional[str]:
    """Why the storage benchmarks cannot run here, or None."""
    if not os.access(REGISTRY_BIN, os.X_OK):
        return f"{REGISTRY_BIN} missing (apt-get install docker-registry)"
    if not shutil.which("curl"):
        return "curl missing (apt-get install curl)"
    return None


def start_registry(tmpdir: Optional[str] = None):
    """An anonymous docker-registry on 127.0.0.1 (tests/helpers/servers.py), started. Without
    `tmpdir` its storage is a private temp dir, removed by `close()`."""
    from tests.helpers import servers

    return servers.Registry(tmpdir).start()


def registry_config(reg, cache_dir: str, batch_size: int = 0) -> dict:
    return {
        "version": 2,
        "backend": {
            "type": "registry",
            "registry": {"scheme": "http", "host": reg.host, "repo": REGISTRY_REPO, "timeout": 30},
        },
        "cache": {"type": "blobcache", "filecache": {"work_dir": cache_dir}},
        "rafs": {"batch_size": batch_size},
    }


@dataclass
class PushedImage:
    tree: Corpus
    boot: str
    blob_id: str
    blob_size: int
    chunks: int
    url: str  # the blob's GET URL at the registry

    @property
    def digest(self) -> str:
        return "sha256:" + self.blob_id


def build_and_push(tree: Corpus, out: str, reg) -> PushedImage:
    """Build `tree` (1 MiB chunks) into `out` and push its blob with our upload code."""
    import nydus_hybrid
    from nydus_hybrid.blobs import push_blob

    fresh_dir(out)
    boot = os.path.join(out, "image.boot")
    report = nydus_hybrid.build(tree.root, boot, os.path.join(out, "blobs"), chunk_size=MiB, progress=False)
    digest, _ = push_blob(registry_config(reg, os.path.join(out, "unused")), report.blob_path)
    assert digest == "sha256:" + report.blob_id, (digest, report.blob_id)
    url = f"http://{reg.host}/v2/{REGISTRY_REPO}/blobs/{digest}"
    return PushedImage(tree, boot, report.blob_id, report.blob_size, report.chunks, url)


def registry_cpu_s(reg) -> Optional[float]:
    """CPU seconds (user + sys) the registry process has used so far."""
    proc = getattr(reg, "_proc", None)
    return None if proc is None else proc_cpu_s(proc.pid)


def registry_blob_requests(reg, digest: str) -> Tuple[int, int]:
    """(successful GETs, HEADs) of the blob in the registry's access log so far."""
    gets = heads = 0
    for method, path, status in reg.request_log():
        if digest in path and status in (200, 206):
            gets += method == "GET"
            heads += method == "HEAD"
    return gets, heads


def registry_requests_after(
    reg, digest: str, before: Tuple[int, int], expect_gets: int, timeout: float = 3.0
) -> Tuple[int, int]:
    """The blob's GETs and HEADs since `before`; the log trails the replies, so poll until
    at least `expect_gets` GETs show up (or `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        g, h = registry_blob_requests(reg, digest)
        if g - before[0] >= expect_gets or time.monotonic() > deadline:
            return g - before[0], h - before[1]
        time.sleep(0.05)


@dataclass
class Fetch:
    """One timed fetch: wall s, bytes delivered to the caller, client CPU s, registry CPU s,
    HTTP requests sent, bytes the backend fetched."""

    wall: float
    nbytes: int
    cpu: float
    reg_cpu: Optional[float]
    requests: int
    fetched: int
    metrics: Optional[dict] = None

    @property
    def mib_s(self) -> float:
        return self.nbytes / MiB / self.wall

    @property
    def backend_share(self) -> Optional[float]:
        """Share of the wall time spent inside backend requests (ours, one thread only:
        with several threads the latencies overlap)."""
        if not self.metrics:
            return None
        return self.metrics["backend"]["read_cumulative_latency_millis_total"] / 1000 / self.wall


def curl_fetch(reg, img: PushedImage, step: int = 0, parallel: int = 1) -> Fetch:
    """curl fetches the whole blob (`step` 0: one GET), or all of it in `step`-byte Range
    GETs (one curl process, one connection; `parallel` > 1: that many transfers at once)."""
    import resource

    fd, cfg = tempfile.mkstemp(prefix="nydus-bench-curl-", suffix=".cfg")
    ranges = (
        [(0, img.blob_size)] if not step else [(o, min(img.blob_size, o + step)) for o in range(0, img.blob_size, step)]
    )
    with os.fdopen(fd, "w") as f:
        for i, (lo, hi) in enumerate(ranges):
            if i:
                f.write("next\n")
            f.write(
                f'url = "{img.url}"\noutput = "/dev/null"\nsilent\nshow-error\nfail\n'
                f'write-out = "%{{size_download}}\\n"\n'
            )
            if step:
                f.write(f'range = "{lo}-{hi - 1}"\n')
    argv = ["curl", "-K", cfg] + (["--parallel", "--parallel-max", str(parallel)] if parallel > 1 else [])
    try:
        r0, c0 = resource.getrusage(resource.RUSAGE_CHILDREN), registry_cpu_s(reg)
        t = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - t
        r1, c1 = resource.getrusage(resource.RUSAGE_CHILDREN), registry_cpu_s(reg)
    finally:
        os.unlink(cfg)
    n = sum(int(x) for x in out.split())
    assert n == img.blob_size, f"curl fetched {n} of {img.blob_size} bytes"
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return Fetch(wall, n, cpu, None if c0 is None or c1 is None else c1 - c0, len(ranges), n)


def image_fetch(
    reg,
    img: PushedImage,
    cache_dir: str,
    batch_size: int = 0,
    threads: int = 1,
    files: Optional[Sequence[Tuple[str, int]]] = None,
    whole_files: bool = False,
) -> Fetch:
    """Cold read through the registry backend: a fresh (empty) cache dir, `Image.open`,
    then `files` (default: all) in 1 MiB reads (`whole_files`: one `im.read(path)` per
    file), on `threads` threads. Open and the blob-metadata fetch are inside the timing."""
    import nydus_hybrid

    files = img.tree.files if files is None else files
    fresh_dir(cache_dir)
    cfg = registry_config(reg, cache_dir, batch_size)
    c0, p0 = registry_cpu_s(reg), time.process_time()
    t = time.perf_counter()
    im = nydus_hybrid.Image.open(img.boot, config=cfg)
    if whole_files:
        n = sum(len(im.read("/" + rel)) for rel, _ in files)
    elif threads > 1:
        n = read_image_blocks_parallel(im, files, threads)
    else:
        n = read_image_sequential(im, files)
    wall = time.perf_counter() - t
    cpu, c1 = time.process_time() - p0, registry_cpu_s(reg)
    m = im.metrics()
    del im
    want = sum(s for _, s in files)
    assert n == want, f"read {n} of {want} bytes"
    b = m["backend"]
    return Fetch(
        wall, n, cpu, None if c0 is None or c1 is None else c1 - c0, b["requests_total"], b["read_amount_total"], m
    )


@dataclass
class ColdVariant:
    name: str
    kind: str  # "curl" or "image"
    size: int = 0  # curl: Range size (0 = whole blob); image: rafs.batch_size (amplify_io)
    threads: int = 1  # curl: parallel transfers; image: Python reader threads
    peer: str = ""  # image: the curl variant sending requests of the same size, as many at once


COLD_VARIANTS = [
    ColdVariant("curl: whole blob, 1 GET", "curl"),
    ColdVariant("curl: 1 MiB Range GETs", "curl", MiB),
    ColdVariant("curl: 1 MiB Range GETs, 4 parallel", "curl", MiB, 4),
    ColdVariant("curl: 4 MiB Range GETs", "curl", 4 * MiB),
    ColdVariant("curl: 4 MiB Range GETs, 4 parallel", "curl", 4 * MiB, 4),
    ColdVariant("Image.read, batch_size 0", "image", 0, 1, "curl: 1 MiB Range GETs"),
    ColdVariant("Image.read, batch_size 1 MiB", "image", MiB, 1, "curl: 1 MiB Range GETs"),
    ColdVariant("Image.read, batch_size 4 MiB", "image", 4 * MiB, 1, "curl: 4 MiB Range GETs"),
    ColdVariant("Image.read, batch_size 0, 4 threads", "image", 0, 4, "curl: 1 MiB Range GETs, 4 parallel"),
    ColdVariant("Image.read, batch_size 4 MiB, 4 threads", "image", 4 * MiB, 4, "curl: 4 MiB Range GETs, 4 parallel"),
]
COLD_BASELINE = COLD_VARIANTS[0].name


def cold_fetch(v: ColdVariant, reg, img: PushedImage, cache_dir: str) -> Fetch:
    if v.kind == "curl":
        return curl_fetch(reg, img, v.size, v.threads)
    return image_fetch(reg, img, cache_dir, v.size, v.threads)


PARTIAL_BATCHES = [0, MiB, 4 * MiB]


def partial_fetch(
    reg, img: PushedImage, picks: Sequence[Tuple[str, int]], cache_dir: str, batch_size: int
) -> Tuple[Fetch, int, int]:
    """Cold read of the picked files (whole, in the sample's random order); returns the
    fetch and the registry's count of blob GETs and HEADs it served for it."""
    before = registry_blob_requests(reg, img.digest)
    f = image_fetch(reg, img, cache_dir, batch_size, files=picks, whole_files=True)
    gets, heads = registry_requests_after(reg, img.digest, before, f.metrics["backend"]["read_count"])
    return f, gets, heads
