"""The main job on a built-in default: build an image of this Python's standard library,
check every chunk, export it as one raw EROFS disk, mount that with the kernel and compare
the mounted tree with the source. Prints a short summary; structured logs go to stderr."""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
import tempfile
import time
from typing import Optional

from nydus_hybrid import kmount, log, treecmp
from nydus_hybrid.image import Image, build


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def run_demo(source: Optional[str], workdir: Optional[str], keep: bool) -> int:
    default = source is None
    source = source or sysconfig.get_paths()["stdlib"]
    # The standard library proper: leave out installed third-party packages.
    exclude = ("site-packages",) if default else ()
    work = workdir or tempfile.mkdtemp(prefix="nydus-hybrid-demo-")
    os.makedirs(work, exist_ok=True)
    boot, blobs = os.path.join(work, "image.boot"), os.path.join(work, "blobs")
    log.event("demo.start", source=source, workdir=work)

    t0 = time.perf_counter()
    report = build(source, boot, blobs, exclude=exclude)
    build_s = time.perf_counter() - t0
    log.event("build.done", seconds=round(build_s, 3), blob_id=report.blob_id, chunks=report.chunks)

    t0 = time.perf_counter()
    image = Image.open(boot, blobs)
    first = next((os.path.join(d, f[0]) for d, _, f in image.walk() if f), None)
    if first:
        image.read(first, 0, 4096)
    ttfb_ms = (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    checked = image.check()
    check_s = time.perf_counter() - t0
    log.event("check.done", seconds=round(check_s, 3), **checked)

    summary = {
        "source": source,
        "files": report.files,
        "inodes": report.inodes,
        "bytes": report.bytes_in,
        "blob_size": report.blob_size,
        "bootstrap_size": report.bootstrap_size,
        "compression_ratio": round(report.bytes_in / report.blob_size, 3) if report.blob_size else None,
        "dedup_ratio": round(report.dedup_ratio, 3),
        "deduped_chunks": report.deduped_chunks,
        "build_seconds": round(build_s, 3),
        "build_mb_per_s": round(report.bytes_in / build_s / 1e6, 1) if build_s else None,
        "time_to_first_byte_ms": round(ttfb_ms, 2),
        "chunks_verified": checked["chunks_verified"],
    }
    if kmount.erofs_available():
        disk = os.path.join(work, "image.erofs")
        image.export_block(disk)
        mnt = os.path.join(work, "mnt")
        with kmount.erofs_mounted(disk, mnt):
            diff = treecmp.compare(source, mnt, ignore=exclude)
        summary["kernel_mount"] = "identical" if diff.ok else f"{len(diff.differences)} differences"
        summary["kernel_entries_compared"] = diff.entries
        for d in diff.differences[:20]:
            log.event("kernel.diff", level=30, detail=d)
    else:
        summary["kernel_mount"] = "skipped (needs root and EROFS)"

    print(json.dumps(summary, indent=2))
    if not keep and workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    ok = summary["kernel_mount"] in ("identical",) or summary["kernel_mount"].startswith("skipped")
    return 0 if ok else 1
