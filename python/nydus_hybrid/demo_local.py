"""`nydus-hybrid demo --local`: the image service without containerd, on a built-in
default: build an image of this Python's standard library, check every chunk, start the
daemon (``python -m nydus_hybrid.daemon``) with a localfs backend and a blob cache, mount
the image through FUSE, read it all back and compare it with the source (and, where the
kernel allows, the exported EROFS disk too). Prints a short summary, then keeps serving
until Ctrl-C. Structured logs go to stderr."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from nydus_hybrid import log, treecmp
from nydus_hybrid.builder import build
from nydus_hybrid.image import Image
from nydus_hybrid.mounts import erofs

if TYPE_CHECKING:
    from nydus_hybrid.client import DaemonClient


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _start_daemon(work: str, boot: str, blobs: str) -> Tuple[subprocess.Popen[bytes], DaemonClient, str]:
    from nydus_hybrid.client import DaemonClient

    mnt, sock, cfg = os.path.join(work, "fuse"), os.path.join(work, "api.sock"), os.path.join(work, "config.json")
    os.makedirs(mnt, exist_ok=True)
    with open(cfg, "w") as f:
        json.dump(
            {
                "version": 2,
                "id": "/",
                "backend": {"type": "localfs", "localfs": {"dir": blobs}},
                "cache": {"type": "blobcache", "filecache": {"work_dir": os.path.join(work, "cache")}},
            },
            f,
        )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nydus_hybrid.daemon",
            "fuse",
            "--thread-num",
            "4",
            "--config",
            cfg,
            "--bootstrap",
            boot,
            "--mountpoint",
            mnt,
            "--apisock",
            sock,
            "--log-level",
            "warn",
        ]
    )
    client = DaemonClient(sock)
    try:
        client.wait_state("RUNNING")
    except TimeoutError:
        proc.kill()
        raise
    return proc, client, mnt


def _stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)  # the daemon unmounts on SIGTERM
    proc.wait(timeout=60)


def run_demo(source: Optional[str], workdir: Optional[str], keep: bool, serve: bool = True) -> int:
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

    summary: Dict[str, Any] = {
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
    proc, client, mnt = _start_daemon(work, boot, blobs)
    try:
        t0 = time.perf_counter()
        if first:
            with open(os.path.join(mnt, first.lstrip("/")), "rb") as f:
                f.read(4096)
        summary["fuse_time_to_first_byte_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        diff = treecmp.compare(source, mnt, ignore=exclude)
        summary["fuse_mount"] = "identical" if diff.ok else f"{len(diff.differences)} differences"
        summary["fuse_entries_compared"] = diff.entries
        for d in diff.differences[:20]:
            log.event("fuse.diff", level=30, detail=d)
        cache = client.get("/api/v1/metrics/blobcache")
        summary["blob_cache_chunks"] = cache["fills"]
        summary["mountpoint"] = mnt
        summary["apisock"] = client.conn.path
        if erofs.erofs_available():
            disk = os.path.join(work, "image.erofs")
            image.export_block(disk)
            with erofs.erofs_mounted(disk, os.path.join(work, "mnt")) as kmnt:
                kdiff = treecmp.compare(source, kmnt, ignore=exclude)
            summary["kernel_mount"] = "identical" if kdiff.ok else f"{len(kdiff.differences)} differences"
        else:
            summary["kernel_mount"] = "skipped (needs root and EROFS)"
        print(json.dumps(summary, indent=2), flush=True)
        if serve:
            print(
                f"serving {source} at {mnt} (API {client.conn.path}); Ctrl-C to unmount and stop",
                file=sys.stderr,
                flush=True,
            )
            # Ctrl-C and SIGTERM become a request to stop, taken here rather than as an exception.
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM])
            signal.sigwait([signal.SIGINT, signal.SIGTERM])
    finally:
        client.close()
        _stop_daemon(proc)
    if not keep and workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    ok = summary["fuse_mount"] == "identical" and (
        summary["kernel_mount"] == "identical" or summary["kernel_mount"].startswith("skipped")
    )
    return 0 if ok else 1
