"""Our daemon and the real nydusd on one real image, for test_vs_nydusd.py: a Debian rootfs
(mmdebstrap, minbase with python3 and perl; cached), built by the real `nydus-image` so
that neither side reads its own builder's output, served by each daemon in turn with the
same v1 config (localfs + blobcache) and 4 threads, and the workloads of issue 14's table,
each timed from outside (a child process, page cache dropped first)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from benchlib.corpus import dir_bytes, fresh_dir
from benchlib.daemon import DaemonStart
from benchlib.pagecache import drop_caches

CACHE = Path(os.environ.get("NYDUS_BENCH_CACHE", os.path.expanduser("~/.cache/nydus-hybrid")))
ROOTFS = CACHE / "debian-rootfs"
IMAGE = CACHE / "debian-rafs"
NYDUS_REF = CACHE / "nydus-ref" / "bin"


def nydus_ref(tool: str) -> str:
    return shutil.which(tool) or str(NYDUS_REF / tool)


def missing() -> Optional[str]:
    for tool in ("nydusd", "nydus-image"):
        if not os.access(nydus_ref(tool), os.X_OK):
            return f"no {tool}: run scripts/install-nydus-reference.sh"
    if not ROOTFS.is_dir() and shutil.which("mmdebstrap") is None:
        return "no Debian rootfs cached and no mmdebstrap to make one (apt-get install mmdebstrap)"
    if shutil.which("fio") is None:
        return "no fio (apt-get install fio)"
    return None


@dataclass
class RealImage:
    boot: Path
    blobs: Path
    files: int  # regular files
    entries: int  # every entry (directories, links, ...) but the root
    bytes: int
    largest: str  # path in the image of its largest regular file


def ensure_debian_image(log: Callable[[str], None] = print) -> RealImage:
    if not ROOTFS.is_dir():
        tmp = Path(str(ROOTFS) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"making a Debian rootfs at {ROOTFS} (mmdebstrap, a few minutes)")
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--include=python3,perl", "--mode=root", "bookworm", str(tmp)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tmp.rename(ROOTFS)
    boot, blobs = IMAGE / "image.boot", IMAGE / "blobs"
    if not boot.exists():
        fresh_dir(str(IMAGE))
        blobs.mkdir()
        log(f"building {IMAGE} with the real nydus-image")
        subprocess.run(
            [nydus_ref("nydus-image"), "create", "--fs-version", "6", "-B", str(boot), "-D", str(blobs), str(ROOTFS)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    files, entries, largest, size = 0, 0, "", -1
    for dirpath, dirs, names in os.walk(ROOTFS):
        entries += len(dirs) + len(names)
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                s = os.path.getsize(p)
                if s > size:
                    largest, size = os.path.relpath(p, ROOTFS), s
    return RealImage(boot, blobs, files, entries, dir_bytes(str(ROOTFS)), largest)


def _timed(argv: List[str], shell: bool = False) -> float:
    t = time.perf_counter()
    subprocess.run(argv if not shell else " ".join(argv), shell=shell, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


# The short rows (a 6.5 MiB dd, a find of 12k entries) take tens of ms, where one run on this
# VM varies by 2x; each is repeated within a round and its median kept.
REPEATS = max(1, int(os.environ.get("NYDUS_BENCH_VS_REPEATS", "5")))


def _repeated(argv: List[str]) -> float:
    """Median seconds of REPEATS runs of `argv`, the page cache dropped before each."""
    took = []
    for _ in range(REPEATS):
        drop_caches()
        took.append(_timed(argv))
    return statistics.median(took)


def workloads(mnt: str, image: RealImage) -> Dict[str, Tuple[float, str]]:
    """Each row of the table, in this order, on a fresh mount with an empty blob cache:
    {row: (rate, unit)}, higher is better. The tars run once (the first is the only cold
    one); dd and find are medians of REPEATS runs."""
    out: Dict[str, Tuple[float, str]] = {}
    mib = 1 << 20
    tar = ["tar", "-C", mnt, "-cf", "-", ".", "|", "cat", ">", "/dev/null"]  # a pipe: GNU tar skips data for /dev/null
    drop_caches()
    out["tar, cold blob cache"] = (image.bytes / mib / _timed(tar, shell=True), "MiB/s")
    drop_caches()
    out["tar, warm blob cache, page cache dropped"] = (image.bytes / mib / _timed(tar, shell=True), "MiB/s")
    big = os.path.join(mnt, image.largest)
    took = _repeated(["dd", f"if={big}", "of=/dev/null", "bs=1M", "status=none"])
    out["dd of the largest file, page cache dropped"] = (os.path.getsize(big) / mib / took, "MiB/s")
    fio = [
        *("fio", "--name=rand4k", f"--filename={big}", "--readonly", "--rw=randread", "--bs=4k"),
        *("--ioengine=psync", "--numjobs=4", "--invalidate=1", "--time_based", "--runtime=3"),
        *("--group_reporting", "--output-format=json"),
    ]
    drop_caches()
    r = subprocess.run(fio, check=True, capture_output=True, text=True)
    out["random 4 KiB (fio psync, 4 jobs)"] = (float(json.loads(r.stdout)["jobs"][0]["read"]["iops"]), "IOPS")
    out["find + stat of every entry, caches dropped"] = (
        image.entries / _repeated(["find", mnt, "-printf", "%s\\n"]),
        "entries/s",
    )
    return out


def serve_and_measure(who: str, image: RealImage, workdir: str) -> Dict[str, Tuple[float, str]]:
    """Start `who` ("nydusd" or "ours") on the image with an empty cache, run the workloads, stop."""
    binary = nydus_ref("nydusd") if who == "nydusd" else None
    d = DaemonStart(os.path.join(workdir, f"real-{who}"), image, nydusd=binary)
    try:
        d.start(timeout=60)
        return workloads(d.mnt, image)
    finally:
        d.stop()
