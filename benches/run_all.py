#!/usr/bin/env python3
"""Run every nydus-hybrid benchmark outside pytest and print the figures as markdown.

    python benches/run_all.py [--mb 200] [--bigfile-gb 2] [--rounds 3] [--json out.json] [--md out.md]
    python benches/run_all.py --only storage      # just some sections (comma-separated)

Builds run as separate processes, interleaved round-robin (tool A, B, C, D, A, B, ...) so
that load from anything else on the machine hits every tool alike; figures are medians.
Peak RSS comes from GNU time (%M) around each process (see benchlib.measure.run_measured for why
not os.wait4 from here). Sizes default to NYDUS_BENCH_MB / NYDUS_BENCH_BIGFILE_GB /
NYDUS_BENCH_STORAGE_MB / NYDUS_BENCH_PARTIAL_MB.

Sections: build (corpus builds), bigfile, read (Image.read vs plain reads), breakdown (where
the time goes; also skipped by --no-extras), storage (registry backend vs curl, cache hits,
requests for a partial read), fuse (our FUSE server vs kernel EROFS and the mfusepy shim;
needs root), daemon (`python -m nydus_hybrid.daemon` start-up vs bare interpreter starts,
API latency idle vs under FUSE read load; needs root), upgrade (the longest read stall per hot
upgrade and per kill -9 + failover under read load, vs quiet windows; needs root; the
machinery is in test_upgrade.py). The goals table needs build and bigfile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: tests.helpers
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benches/: benchlib, fusebench, test_upgrade

import fusebench as fb
from benchlib.corpus import (
    ensure_bigfile,
    ensure_corpus,
    ensure_daemon_tree,
    ensure_partial_tree,
    ensure_storage_tree,
    ensure_tiny_tree,
    fresh_dir,
)
from benchlib.daemon import (
    DAEMON_STARTUP_GOAL_MS,
    DEDICATED,
    FLOOR,
    SHARED,
    STARTUP_BASELINES,
    Startup,
    daemon_image,
    daemon_missing,
    import_children,
    import_profile,
    startup_rows,
)
from benchlib.daemon_load import (
    API_CONCURRENCY,
    API_READERS,
    API_SEQUENTIAL,
    API_TARGETS,
    CONTROL,
    DAEMON,
    DaemonLoad,
    api_latency_rounds,
)
from benchlib.env import (
    bench_dir,
    bench_mb,
    bigfile_gb,
    build_identity,
    daemon_api_rounds,
    daemon_mb,
    daemon_rounds,
    machine_info,
    partial_fraction,
    partial_mb,
    storage_mb,
)
from benchlib.measure import Run, rss_method, rss_quartiles
from benchlib.pagecache import warm_page_cache
from benchlib.reads import (
    SourceFds,
    pick_fraction,
    random_reads,
    read_files_readinto,
    read_image_blocks_parallel,
    read_image_random,
    read_image_sequential,
    read_image_threads,
    read_source_random,
    read_source_sequential,
)
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
from benchlib.report import GiB, MiB, cell, fmt, mib, pct
from benchlib.tools import (
    BASELINE,
    RSS_GOAL_MIB,
    TOOLS,
    Summary,
    Tool,
    nydus_cmd,
    python_baseline_rss_kib,
    run_tool,
    summarize,
    tar_zstd_cmd,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds` (from /proc/stat)."""

    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit: float, threshold: float = 0.15) -> float:
    """Wait (at most `limit` s) until under `threshold` of the CPUs are busy; returns the last reading."""
    deadline = time.time() + limit
    b = busy_fraction()
    while b > threshold and time.time() < deadline:
        log(f"machine busy ({b:.0%} of CPUs); waiting ...")
        time.sleep(4)
        b = busy_fraction()
    return b


def interleaved(
    tools: Sequence[Tool], src: str, outdir: str, input_bytes: int, rounds: int, sample_rss: bool = False
) -> Dict[str, Tuple[Summary, List[Run]]]:
    runs: Dict[str, List[Tuple[Run, int]]] = {t.name: [] for t in tools}
    for r in range(rounds):
        for t in tools:
            out = os.path.join(outdir, "out-" + "".join(c if c.isalnum() else "_" for c in t.name))
            run = run_tool(t, src, out, sample_rss=sample_rss)
            runs[t.name].append(run)
            log(f"  round {r + 1}/{rounds} {t.name:34s} {run[0].wall:7.2f} s  {run[0].maxrss_mib:7.1f} MiB")
            fresh_dir(out)
    return {name: (summarize(name, input_bytes, rs), [x for x, _ in rs]) for name, rs in runs.items()}


def timed(fn: Callable[[], int], rounds: int) -> Tuple[float, int, float]:
    """Median wall seconds, bytes read, median cores used (this process's CPU s / wall s)."""
    fn()  # warm-up
    times, cores = [], []
    n = 0
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        n = fn()
        w = time.perf_counter() - t
        times.append(w)
        cores.append((time.process_time() - c) / w)
    return statistics.median(times), n, statistics.median(cores)


def storage_section(a, work: str, md: List[str], doc: dict) -> None:
    """Registry backend against a local docker-registry: cold reads vs curl, cache hits vs
    plain reads, and what reading a small part of a large image costs in requests and bytes."""
    import nydus_hybrid

    reg = start_registry(fresh_dir(os.path.join(work, "registry")))
    try:
        tree = ensure_storage_tree(a.storage_mb, log=log)
        warm_page_cache(tree.root)
        img = build_and_push(tree, os.path.join(work, "storage-image"), reg)
        cache = os.path.join(work, "storage-cache")
        rounds = a.rounds

        # -------- cold reads, interleaved round-robin with curl
        log(f"storage: cold reads of {tree.mib:.0f} MiB ({len(tree.files)} files), {rounds} interleaved rounds")
        for v in COLD_VARIANTS:  # warm-up: registry's page cache, code paths
            cold_fetch(v, reg, img, cache)
        runs: Dict[str, List[Fetch]] = {v.name: [] for v in COLD_VARIANTS}
        for r in range(rounds):
            for v in COLD_VARIANTS:
                f = cold_fetch(v, reg, img, cache)
                runs[v.name].append(f)
                log(f"  round {r + 1}/{rounds} {v.name:44s} {f.wall:6.3f} s {f.mib_s:8.1f} MiB/s")
        fresh_dir(cache)
        base = statistics.median(f.mib_s for f in runs[COLD_BASELINE])
        md.append(
            f"### Storage: cold read of {tree.mib:.0f} MiB ({len(tree.files)} incompressible files, "
            f"{img.chunks} chunks of 1 MiB) from docker-registry on loopback (median of {rounds} interleaved rounds)\n"
        )
        md.append(
            "| reader | MiB/s | ratio vs curl whole blob | ratio vs curl, same requests | HTTP requests | "
            "client CPU s | registry CPU s | wall share in backend requests |"
        )
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        doc["storage_cold"] = {
            "mib": tree.mib,
            "files": len(tree.files),
            "chunks": img.chunks,
            "blob_bytes": img.blob_size,
            "variants": {},
        }
        rates = {name: statistics.median(f.mib_s for f in fs) for name, fs in runs.items()}
        for v in COLD_VARIANTS:
            fs = runs[v.name]
            rate = rates[v.name]
            regs = [f.reg_cpu for f in fs if f.reg_cpu is not None]
            reg_cpu = f"{statistics.median(regs):.2f}" if regs else "n/a"
            peer = f"{rate / rates[v.peer]:.2f}" if v.peer else ""
            share = ""
            if v.kind == "image" and v.threads == 1:
                share = f"{statistics.median(f.backend_share for f in fs):.0%}"
            md.append(
                f"| {v.name} | {fmt(rate)} | {rate / base:.2f} | {peer} | {fs[-1].requests} | "
                f"{statistics.median(f.cpu for f in fs):.2f} | {reg_cpu} | {share} |"
            )
            doc["storage_cold"]["variants"][v.name] = {
                "mib_s": rate,
                "walls": [f.wall for f in fs],
                "requests": fs[-1].requests,
                "fetched_bytes": fs[-1].fetched,
                "client_cpu_s": [f.cpu for f in fs],
                "registry_cpu_s": [f.reg_cpu for f in fs],
                "ratio_vs_curl_whole_blob": rate / base,
                "ratio_vs_peer": rate / rates[v.peer] if v.peer else None,
                "backend_share": [f.backend_share for f in fs],
                "blobcache": fs[-1].metrics["blobcache"] if fs[-1].metrics else None,
            }
        md.append(
            "\nEach round of ours starts from an empty cache dir and a new `Image.open` (the blob "
            "metadata fetch, 1 HEAD + 3 GETs, is inside the timing); reads are 1 MiB `Image.read`s of "
            "every file. curl runs as one process per round (start-up included) writing to /dev/null; "
            '"same requests" = the curl row with the same request size and as many in flight. '
            "Client CPU = this process (ours) or curl; registry CPU = the docker-registry process. "
            "Wall share in backend requests = `read_cumulative_latency_millis_total` / wall "
            "(single-threaded rows only).\n"
        )

        # -------- warm (cache-hit) reads vs plain files
        log("storage: warm reads ...")
        warm_cache = os.path.join(work, "storage-warm-cache")
        image_fetch(reg, img, warm_cache)
        im = nydus_hybrid.Image.open(img.boot, config=registry_config(reg, warm_cache))
        readers = [
            ("plain files: open().readinto(1 MiB)", lambda: read_files_readinto(tree.root, tree.files)),
            ("Image.read(1 MiB), cache hit", lambda: read_image_sequential(im, tree.files)),
            ("Image.read(1 MiB), cache hit, 2 threads", lambda: read_image_blocks_parallel(im, tree.files, 2)),
        ]
        for _, fn in readers:
            fn()
        times: Dict[str, List[float]] = {n: [] for n, _ in readers}
        cores: Dict[str, List[float]] = {n: [] for n, _ in readers}
        for _ in range(max(rounds, 5)):
            for name, fn in readers:
                t, c = time.perf_counter(), time.process_time()
                n = fn()
                w = time.perf_counter() - t
                assert n == tree.total_bytes, (name, n)
                times[name].append(w)
                cores[name].append((time.process_time() - c) / w)
        assert im.metrics()["backend"]["requests_total"] == 0, "a cache hit went to the registry"
        md.append(
            f"### Storage: warm read (every chunk in the cache) of the same {tree.mib:.0f} MiB in 1 MiB "
            f"blocks, page cache warm for both (median of {max(rounds, 5)} interleaved rounds)\n"
        )
        md.append("| reader | MiB/s | ratio vs plain files | cores used |")
        md.append("|---|---:|---:|---:|")
        doc["storage_warm"] = {}
        wbase = tree.total_bytes / MiB / statistics.median(times[readers[0][0]])
        for name, _ in readers:
            rate = tree.total_bytes / MiB / statistics.median(times[name])
            md.append(f"| {name} | {fmt(rate)} | {rate / wbase:.2f} | {statistics.median(cores[name]):.2f} |")
            doc["storage_warm"][name] = {"mib_s": rate, "walls": times[name]}
        md.append("\nThe Image opened afresh on the filled cache made no backend request at all.\n")

        # -------- partial read: requests and bytes
        ptree = ensure_partial_tree(a.partial_mb, log=log)
        pimg = build_and_push(ptree, os.path.join(work, "partial-image"), reg)
        frac = partial_fraction()
        picks = pick_fraction(ptree.files, frac)
        needed = sum(sz for _, sz in picks)
        pcache = os.path.join(work, "partial-cache")
        log(f"storage: {len(picks)} of {len(ptree.files)} files of a {ptree.mib:.0f} MiB image, {rounds} rounds")
        pruns: Dict[int, list] = {b: [] for b in PARTIAL_BATCHES}
        whole: List[Fetch] = []
        for _ in range(rounds):
            for b in PARTIAL_BATCHES:
                pruns[b].append(partial_fetch(reg, pimg, picks, pcache, b))
            whole.append(curl_fetch(reg, pimg))
        fresh_dir(pcache)
        md.append(
            f"### Storage: read {len(picks)} of {len(ptree.files)} files ({frac:.0%}, chosen at random with a "
            f"fixed seed; {mib(needed)} MiB) of a {ptree.mib:.0f} MiB image (files 4 KiB-2 MiB, "
            f"incompressible, {pimg.chunks} chunks), cold, each file read whole\n"
        )
        md.append(
            "| fetch | backend requests (HEAD + GET) | registry blob GETs (its log) | MiB fetched | "
            "read amplification (fetched / needed) | chunks fetched (asked + amplified) | wall s (median) |"
        )
        md.append("|---|---:|---:|---:|---:|---:|---:|")
        doc["storage_partial"] = {
            "image_mib": ptree.mib,
            "files": len(ptree.files),
            "picked": len(picks),
            "needed_bytes": needed,
            "chunks": pimg.chunks,
            "batch_size": {},
        }
        for b in PARTIAL_BATCHES:
            f, gets, heads = pruns[b][-1]
            bm, cm = f.metrics["backend"], f.metrics["blobcache"]
            wall = statistics.median(x[0].wall for x in pruns[b])
            label = "Image.read, batch_size 0" if not b else f"Image.read, batch_size {b // MiB} MiB"
            md.append(
                f"| {label} | {bm['requests_total']} | {gets} | {mib(bm['read_amount_total'])} | "
                f"{bm['read_amount_total'] / needed:.2f} | {cm['chunk_misses'] + cm['amplified_chunks']} "
                f"({cm['chunk_misses']} + {cm['amplified_chunks']}) | {wall:.3f} |"
            )
            doc["storage_partial"]["batch_size"][b] = {
                "requests_total": bm["requests_total"],
                "read_count": bm["read_count"],
                "read_amount_total": bm["read_amount_total"],
                "registry_gets": gets,
                "registry_heads": heads,
                "chunk_misses": cm["chunk_misses"],
                "amplified_chunks": cm["amplified_chunks"],
                "walls": [x[0].wall for x in pruns[b]],
            }
        wwall = statistics.median(f.wall for f in whole)
        md.append(
            f"| (reference) curl: whole blob | 1 | 1 | {mib(pimg.blob_size)} | "
            f"{pimg.blob_size / needed:.2f} | all {pimg.chunks} | {wwall:.3f} |"
        )
        doc["storage_partial"]["curl_whole_blob"] = {"bytes": pimg.blob_size, "walls": [f.wall for f in whole]}
        md.append(
            '\nBackend requests and bytes come from `Image.metrics()["backend"]` (`requests_total`, '
            "`read_amount_total`) and include the blob metadata (1 HEAD + 3 GETs on first read). "
            '"Asked" chunks are cache misses a read waited for; "amplified" ones came along in '
            "the same request (amplify_io). The request and byte counts are the same in every round.\n"
        )
    finally:
        reg.close()


def daemon_section(a, work: str, md: List[str], doc: dict) -> None:
    """The daemon (`python -m nydus_hybrid.daemon`): exec -> API socket -> RUNNING against
    bare interpreter starts, where the import time goes, and API latency with the FUSE
    mount idle vs under read load."""
    rounds = a.daemon_rounds
    image = daemon_image(os.path.join(work, "daemon-startup-image"))
    rows = startup_rows(image)
    run = os.path.join(work, "daemon-startup")
    log(f"daemon: start-up, {rounds} interleaved rounds of {len(rows)} rows")
    for _, fn in rows:  # warm-up: page cache, .pyc files
        fn(run)
    runs: Dict[str, List[Startup]] = {name: [] for name, _ in rows}
    for r in range(rounds):
        for name, fn in rows:
            runs[name].append(fn(run))
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{runs[n][-1].running_s * 1000:.0f}" for n, _ in rows) + " ms")
    floor = pct([x.running_s for x in runs[FLOOR]], 0.5)
    ms = lambda v: f"{v * 1000:,.1f}"  # noqa: E731
    md.append(
        f"### Daemon: start-up, exec -> API socket accepts -> GET /api/v1/daemon says RUNNING "
        f"({rounds} interleaved rounds)\n"
    )
    md.append(
        "| what | socket p50 ms | RUNNING p50 ms | p90 ms | max ms | p50 ratio vs floor | "
        "CPU s at RUNNING | waiting for a CPU ms (p50 / max) | SIGTERM -> exit ms |"
    )
    md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    doc["daemon_startup"] = {"rounds": rounds, "rows": {}}
    for name, _ in rows:
        xs = runs[name]
        ready = [x.running_s for x in xs]
        is_daemon = xs[0].socket_s is not None
        sock = ms(pct([x.socket_s for x in xs], 0.5)) if is_daemon else ""
        cpu = f"{statistics.median(x.cpu_s for x in xs):.2f}" if is_daemon else ""
        waits = [x.runq_wait_s for x in xs if x.runq_wait_s is not None]
        wait = f"{ms(statistics.median(waits))} / {ms(max(waits))}" if waits else ""
        stop = ms(statistics.median(x.stop_s for x in xs)) if is_daemon else ""
        label = name if is_daemon else f"{name}: exec -> code ran"
        md.append(
            f"| {label} | {sock} | {ms(pct(ready, 0.5))} | {ms(pct(ready, 0.9))} | {ms(max(ready))} | "
            f"{pct(ready, 0.5) / floor:.2f} | {cpu} | {wait} | {stop} |"
        )
        doc["daemon_startup"]["rows"][name] = {
            "running_s": ready,
            "socket_s": [x.socket_s for x in xs],
            "exit_s": [x.exit_s for x in xs],
            "cpu_s": [x.cpu_s for x in xs],
            "runq_wait_s": [x.runq_wait_s for x in xs],
            "stop_s": [x.stop_s for x in xs],
            "disk_read_bytes": [x.disk_read_bytes for x in xs],
            "mounted": [x.mounted for x in xs],
        }
    goal = DAEMON_STARTUP_GOAL_MS / 1000
    worst = {n: pct([x.running_s for x in runs[n]], 0.9) for n in (DEDICATED, SHARED)}
    md.append(
        f"\nBaselines are `python -c CODE` spawned like the daemon, timed until CODE has run (it then "
        f"writes a byte to a pipe; exit adds ~{ms(pct([x.exit_s - x.running_s for x in runs[FLOOR]], 0.5))}-"
        f"{ms(pct([x.exit_s - x.running_s for x in runs[STARTUP_LAST]], 0.5))} ms of interpreter "
        "teardown, not counted). The daemon is polled every 1 ms (connect(), then GET on that connection). "
        "CPU s = the daemon's user + sys (all threads) when RUNNING was seen; waiting for a CPU = "
        "its threads' run-queue time (`/proc/PID/task/*/schedstat`).\n"
    )
    doc["daemon_startup"]["goal_met_p90"] = {n: v < goal for n, v in worst.items()}

    log("daemon: import profile ...")
    med, depth, order = import_profile("nydus_hybrid.daemon.main", runs=5)
    main_mod = "nydus_hybrid.daemon.main"
    md.append(
        f"Where the import time goes: `python -X importtime -c 'import {main_mod}'` (median of 5; "
        "importtime's own overhead inflates the figures a little):\n"
    )
    md.append("| module | cumulative ms | self ms |")
    md.append("|---|---:|---:|")
    shown = [("site", "site (interpreter start-up, .pth files)")]
    shown += [(main_mod, main_mod)]
    shown += [(n, f"&nbsp;&nbsp;{n}") for n, c in import_children(main_mod, med, depth, order) if c >= 1.0]
    for n in ("aiohttp", "aiohttp.connector", "nydus_hybrid", "nydus_hybrid._core"):
        if n in med:
            shown.append((n, f"&nbsp;&nbsp;&nbsp;&nbsp;of which {n}"))
    for n, label in shown:
        md.append(f"| {label} | {med[n][1]:,.1f} | {med[n][0]:,.1f} |")
    top_self = sorted(med.items(), key=lambda kv: -kv[1][0])[:5]
    md.append("\nLargest self times: " + ", ".join(f"`{n}` {v[0]:.1f} ms" for n, v in top_self) + ".\n")
    doc["daemon_import_ms"] = {n: {"self": v[0], "cumulative": v[1]} for n, v in med.items() if v[1] >= 1.0}

    tree = ensure_daemon_tree(a.daemon_mb, log=log)
    log(f"daemon: API latency, {a.daemon_api_rounds} rounds ...")
    load = DaemonLoad(tree, os.path.join(work, "daemon-load"), log=log)
    try:
        res = api_latency_rounds(load, a.daemon_api_rounds, log=log)
    finally:
        load.close()
    md.append(
        f"### Daemon: GET /api/v1/metrics latency, mount idle vs {API_READERS} processes reading "
        f"through it ({a.daemon_api_rounds} interleaved rounds)\n"
    )
    md.append(
        "| server | requests | idle p50 µs | idle p99 µs | under read load p50 µs | p99 µs | p50 ratio | p99 ratio |"
    )
    md.append("|---|---|---:|---:|---:|---:|---:|---:|")
    doc["daemon_api"] = {"rounds": a.daemon_api_rounds, "tree_mib": tree.mib, "latency_us": {}}
    for target in API_TARGETS:
        for kind, label in (
            ("concurrent", f"{API_CONCURRENCY} at once"),
            ("sequential", f"{API_SEQUENTIAL} one after another"),
        ):
            if kind == "concurrent":
                i, l_ = res.concurrent(target, "idle"), res.concurrent(target, "loaded")
            else:
                i, l_ = res.seq[(target, "idle")], res.seq[(target, "loaded")]
            i50, i99, l50, l99 = pct(i, 0.5), pct(i, 0.99), pct(l_, 0.5), pct(l_, 0.99)
            md.append(
                f"| {target} | {label} | {i50:,.0f} | {i99:,.0f} | {l50:,.0f} | {l99:,.0f} | "
                f"{l50 / i50:.1f} | {l99 / i99:.1f} |"
            )
            doc["daemon_api"]["latency_us"][f"{target} | {kind}"] = {"idle": i, "loaded": l_}
    alone, during = res.rate(res.read_alone), res.rate(res.read_during)
    walls = {k: statistics.median(v) * 1000 for k, v in res.burst_wall.items()}
    md.append(
        f"\nA burst of {API_CONCURRENCY} to the daemon took {walls[(DAEMON, 'idle')]:.1f} ms idle and "
        f"{walls[(DAEMON, 'loaded')]:.1f} ms under load (median; control "
        f"{walls[(CONTROL, 'idle')]:.1f} / {walls[(CONTROL, 'loaded')]:.1f} ms). "
        f"Server CPU per request, idle: daemon {sum(res.idle_cpu) / max(1, res.idle_requests) * 1e6:.0f} µs, "
        f"control {sum(res.control_idle_cpu) / max(1, res.idle_requests) * 1e6:.0f} µs. "
        f"Readers ({API_READERS} processes, 1 MiB reads of {len(tree.files)} files of 4 MiB, "
        f"{tree.mib:.0f} MiB): {fmt(during)} MiB/s while the requests ran, {fmt(alone)} MiB/s with no "
        f"requests ({during / alone:.2f}); the daemon's `data_read` / bytes the readers got = "
        f"{res.data_read / max(1, res.reader_bytes):.2f}, so the reads did reach the daemon.\n"
    )
    doc["daemon_api"].update(
        {
            "readers_mib_s_during": during,
            "readers_mib_s_alone": alone,
            "burst_wall_ms": {f"{k[0]} | {k[1]}": v for k, v in walls.items()},
            "idle_cpu_s": res.idle_cpu,
            "control_idle_cpu_s": res.control_idle_cpu,
            "idle_requests": res.idle_requests,
            "data_read": res.data_read,
            "reader_bytes": res.reader_bytes,
        }
    )

    imp = pct([x.running_s for x in runs[STARTUP_LAST]], 0.5)
    md.append("### Daemon goal\n")
    md.append("| goal | measured | met |")
    md.append("|---|---|---|")
    for n in (DEDICATED, SHARED):
        ready = [x.running_s for x in runs[n]]
        md.append(
            f"| {n}: RUNNING within {DAEMON_STARTUP_GOAL_MS} ms of exec | p50 {ms(pct(ready, 0.5))} ms, "
            f"p90 {ms(pct(ready, 0.9))} ms, max {ms(max(ready))} ms; of the p50, {ms(floor)} ms is the bare "
            f"interpreter and {ms(imp - floor)} ms importing `{main_mod}` (its p50 start: "
            f"{ms(imp)} ms) | {'yes' if worst[n] < goal else 'no'} (p90) |"
        )
    md.append("")


def fuse_section(a, work: str, md: List[str], doc: dict) -> None:
    """Our FUSE server against the kernel's EROFS mount of the same image's block export
    (ceiling) and the mfusepy shim (floor); see fusebench.py."""
    tree = fb.ensure_fuse_tree(a.fuse_mb, a.fuse_files, log=log)
    img = fb.build_fuse_image(tree, os.path.join(work, "fuse-image"), log=log)
    shim_why = fb.shim_missing()
    rdrs = fb.readers(shim=shim_why is None)
    rounds = a.rounds
    log(f"fuse: {tree.big_size // MiB} MiB file + {tree.files} small files, {rounds} interleaved rounds")
    try:
        res = fb.run_section(img, os.path.join(work, "fuse-mnt"), rounds, rdrs, log=log)
    finally:
        fb.close_all()
    K, OURS = fb.KERNEL_NAME, fb.OURS_NAME
    med = statistics.median

    def gib(name, state, streams):
        ts = res.seq.get((name, state, streams))
        return None if not ts else tree.big_size / GiB / med(t.wall for t in ts)

    def server_cpu(name, state, streams):
        ts = res.seq.get((name, state, streams))
        cpus = [t.server_cpu for t in ts or () if t.server_cpu is not None]
        return f"{med(cpus) * GiB / tree.big_size:.2f}" if cpus else ""

    def cells(name, state, streams):
        v, k = gib(name, state, streams), gib(K, state, streams)
        return ("", "") if v is None else (f"{v:.2f}", f"{v / k:.2f}")

    doc["fuse"] = {
        "big_mib": tree.big_size // MiB,
        "files": tree.files,
        "entries": tree.entries,
        "blob_bytes": img.blob_bytes,
        "block_bytes": os.path.getsize(img.block),
        "shim": shim_why or "measured",
        "mount_info": res.mount_info,
        "seq": {},
        "random": {},
        "walk": {},
        "stat_pass_us": {},
        "roundtrip_us": {},
        "first_byte": {},
    }
    for (name, state, streams), ts in res.seq.items():
        doc["fuse"]["seq"][f"{name} | {state} | {streams}"] = {
            "gib_s": gib(name, state, streams),
            "walls": [t.wall for t in ts],
            "server_cpu_s": [t.server_cpu for t in ts],
            "client_cpu_s": [t.client_cpu for t in ts],
        }

    mi = res.mount_info.get(OURS, {})
    md.append(
        f"### FUSE: sequential read of one {tree.big_size // MiB} MiB file in 1 MiB blocks "
        f"(median of {rounds} interleaved rounds)\n"
    )
    md.append(
        "| reader | page cache warm GiB/s | ratio vs kernel | page cache dropped GiB/s | ratio vs kernel | "
        "server CPU s per GiB (dropped) | client CPU s per GiB (dropped) | all dropped, from disk GiB/s | "
        "ratio vs kernel |"
    )
    md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rdrs:
        w, d, dk = cells(r.name, "warm", 1), cells(r.name, "dropped", 1), cells(r.name, "disk", 1)
        ccpu = [t.client_cpu for t in res.seq[(r.name, "dropped", 1)]]
        md.append(
            f"| {r.name} | {w[0]} | {w[1]} | {d[0]} | {d[1]} | {server_cpu(r.name, 'dropped', 1)} | "
            f"{med(ccpu) * GiB / tree.big_size:.2f} | {dk[0]} | {dk[1]} |"
        )
    md.append(
        "\nSame file, 4 readers at once (threads of one process, each reading its own quarter "
        "sequentially); GiB/s = all four together:\n"
    )
    md.append(
        "| reader | page cache warm GiB/s | ratio vs kernel | page cache dropped GiB/s | ratio vs kernel | "
        "server CPU s per GiB (dropped) |"
    )
    md.append("|---|---:|---:|---:|---:|---:|")
    for r in rdrs:
        w, d = cells(r.name, "warm", 4), cells(r.name, "dropped", 4)
        md.append(f"| {r.name} | {w[0]} | {w[1]} | {d[0]} | {d[1]} | {server_cpu(r.name, 'dropped', 4)} |")
    md.append(
        f'\n"Page cache dropped": before each round `echo 3 > /proc/sys/vm/drop_caches`, then the '
        "backing files (bootstrap + blob, block image) are read back into the page cache, so the first "
        "read of the mounted file misses the mount's page cache but not the disk; the FUSE servers keep "
        'their process state. "Warm": the same file read a third time right after (FUSE mounts keep '
        "the page cache across opens; the untimed second read also promotes every page on the LRU, a "
        'one-off cost). "From disk": drop_caches alone before the read. '
        f"Our mount: max_read {mi.get('max_read', '?')}, kernel readahead window "
        f"{mi.get('read_ahead_kb', '?')} KiB unless a row sets `read_ahead_kb` "
        "(`/sys/class/bdi/0:NN/read_ahead_kb`). Server CPU = the server process's user + sys "
        "time; client CPU = this process's (for kernel EROFS all the filesystem work is there).\n"
    )

    main = [r for r in rdrs if r.main]
    md.append(
        f"### FUSE: {fb.fuse_random_reads()} random 4 KiB reads (os.pread at distinct 4 KiB-aligned "
        f"offsets of the big file, page cache dropped first; median over {rounds} rounds)\n"
    )
    md.append("| reader | p50 µs | p99 µs | mean µs | p50 ratio vs kernel | p99 ratio vs kernel |")
    md.append("|---|---:|---:|---:|---:|---:|")
    k50 = med(pct(x, 0.5) for x in res.rnd[K])
    k99 = med(pct(x, 0.99) for x in res.rnd[K])
    for r in main:
        p50 = med(pct(x, 0.5) for x in res.rnd[r.name])
        p99 = med(pct(x, 0.99) for x in res.rnd[r.name])
        mean = med(statistics.fmean(x) for x in res.rnd[r.name])
        md.append(f"| {r.name} | {p50:,.1f} | {p99:,.1f} | {mean:,.1f} | {p50 / k50:,.1f} | {p99 / k99:,.1f} |")
        doc["fuse"]["random"][r.name] = {"p50_us": p50, "p99_us": p99, "mean_us": mean}

    n = tree.entries
    md.append(
        f"\n### FUSE: find + stat of {n:,} entries ({tree.files:,} files of 1-100 bytes in "
        f"{tree.dirs} directories, plus the big file; median of {rounds} rounds)\n"
    )
    md.append(
        "| reader | right after mount s | µs per entry | ratio vs kernel | again (cached) s | µs per entry | "
        "ratio vs kernel |"
    )
    md.append("|---|---:|---:|---:|---:|---:|---:|")
    kc, kw = med(res.walk[(K, "cold")]), med(res.walk[(K, "cached")])
    for name in [r.name for r in main] + [fb.TIMEOUT0_NAME]:
        c, w = med(res.walk[(name, "cold")]), med(res.walk[(name, "cached")])
        md.append(
            f"| {name} | {c:.3f} | {c / n * 1e6:.2f} | {c / kc:.2f} | {w:.3f} | {w / n * 1e6:.2f} | {w / kw:.2f} |"
        )
        doc["fuse"]["walk"][name] = {"cold_s": res.walk[(name, "cold")], "cached_s": res.walk[(name, "cached")]}
    md.append(
        "\n`os.fwalk` of the mount + `os.lstat(name, dir_fd=...)` of every entry (what `find` does). "
        "Ratios are time / kernel time (higher = slower). The backing files are in the page cache. "
        "With timeouts 0 (`--entry-timeout 0 --attr-timeout 0`) nothing is cached, so both passes "
        "ask the server for every entry.\n"
    )

    md.append(
        "Cost of one stat, per entry (an lstat-only pass over every entry relative to an open "
        "directory fd, so one path component each; the walk's listing is not in it):\n"
    )
    md.append("| what | µs per stat |")
    md.append("|---|---:|")
    rows = []
    for r in main:
        rows.append((f"{r.name}: cached (second pass)", med(res.stat_pass[r.name]) / n * 1e6))
    for t in (4, 2, 1):
        name = fb.ours_timeout0(t).name
        rows.append((f"{name}: every lstat to the server", med(res.stat_pass[name]) / n * 1e6))
    for t in (4, 2, 1):
        rows.append(
            (
                f"bare FUSE round trip, {t} thread{'s' if t > 1 else ''}: fstat of an open file with "
                "attr timeout 0 (one GETATTR)",
                med(res.roundtrip[t]),
            )
        )
    for what, us in rows:
        md.append(f"| {what} | {us:.2f} |")
        doc["fuse"]["stat_pass_us"][what] = us
    md.append("")

    md.append(
        f"### FUSE: first byte of a cold file (open + read 1 byte + close of {fb.FIRST_BYTE_FILES} "
        f"small files in different directories, on a fresh mount; median of {rounds} rounds)\n"
    )
    md.append("| reader | p50 µs | p90 µs | first file after mount µs | p50 ratio vs kernel |")
    md.append("|---|---:|---:|---:|---:|")
    kf = med(med(x) for x in res.first[K])
    for r in main:
        xs = res.first[r.name]
        p50 = med(med(x) for x in xs)
        p90 = med(pct(x, 0.9) for x in xs)
        f0 = med(x[0] for x in xs)
        md.append(f"| {r.name} | {p50:,.1f} | {p90:,.1f} | {f0:,.1f} | {p50 / kf:.1f} |")
        doc["fuse"]["first_byte"][r.name] = {"p50_us": p50, "p90_us": p90, "first_us": f0, "all": xs}
    if shim_why:
        md.append(f"\nThe mfusepy shim column is left out: {shim_why}.")

    # goals
    d1, k1 = gib(OURS, "dropped", 1), gib(K, "dropped", 1)
    seq_ok = d1 >= 1.8 or d1 >= k1 / 2
    cached = med(res.stat_pass[OURS]) / n * 1e6
    rt = med(res.roundtrip[4])
    unc = med(res.stat_pass[fb.TIMEOUT0_NAME]) / n * 1e6
    kcached = med(res.stat_pass[K]) / n * 1e6
    md.append("\n#### FUSE goals\n")
    md.append("| goal | measured | met |")
    md.append("|---|---|---|")
    best = max((r.name for r in rdrs if r.kind == "ours"), key=lambda nm: gib(nm, "dropped", 1))
    b1 = gib(best, "dropped", 1)
    best_ok = b1 >= 1.8 or b1 >= k1 / 2
    md.append(
        f"| warm sequential read >= 1.8 GiB/s per stream, or >= 50% of kernel EROFS (server warm, page "
        f"cache dropped; default mount: 4 threads, 128 KiB readahead) | {d1:.2f} GiB/s vs kernel {k1:.2f} GiB/s "
        f"({d1 / k1:.0%}); page cache warm {gib(OURS, 'warm', 1):.2f} vs {gib(K, 'warm', 1):.2f} GiB/s | "
        f"{'yes' if seq_ok else 'no'} |"
    )
    md.append(
        f"| the same, best configuration measured | {best}: {b1:.2f} GiB/s ({b1 / k1:.0%} of kernel) | "
        f"{'yes (>= 1.8 GiB/s)' if b1 >= 1.8 else 'yes' if best_ok else 'no'} |"
    )
    md.append(
        f"| cached stat within 2x of the raw FUSE round trip | cached lstat {cached:.2f} µs vs bare round "
        f"trip {rt:.2f} µs ({cached / rt:.2f}x) and vs an uncached lstat through the server {unc:.2f} µs; "
        f"kernel EROFS cached lstat {kcached:.2f} µs ({cached / kcached:.2f}x) | "
        f"{'yes' if cached <= 2 * rt else 'no'} |"
    )
    md.append("")
    doc["fuse"]["goals"] = {
        "best_config": best,
        "best_dropped_gib_s": b1,
        "seq_dropped_gib_s": d1,
        "kernel_dropped_gib_s": k1,
        "seq_met": seq_ok,
        "cached_stat_us": cached,
        "roundtrip_us": rt,
        "uncached_stat_us": unc,
        "kernel_cached_stat_us": kcached,
        "stat_met": cached <= 2 * rt,
    }


def upgrade_section(a, work: str, md: List[str], doc: dict) -> None:
    """Hot upgrades, then kill -9 + failovers, of a dedicated daemon under read load: the
    longest read stall per operation against quiet windows of the same length (see
    test_upgrade.py, whose machinery this uses)."""
    import test_upgrade as ub

    rounds = a.upgrade_rounds
    log(
        f"upgrade: {rounds} hot upgrades, then {rounds} failovers, then {rounds} failovers to a standby, "
        "under read load"
    )
    bench = ub.UpgradeBench(os.path.join(work, "upgrade"), log=log)
    try:
        ops = {kind: bench.measure(kind, rounds) for kind in ub.KINDS}
    finally:
        bench.close()
    errors = bench.errors
    if errors:
        raise RuntimeError(f"upgrade: {len(errors)} failed reads, first: {errors[:5]}")
    if bench.dt.is_mounted(bench.mnt):
        raise RuntimeError("upgrade: the mount outlived the last daemon's SIGTERM")
    figs = {kind: ub.figures(v) for kind, v in ops.items()}
    all_probe = list(bench.probe.lats)
    doc["upgrade"] = {
        "rounds": rounds,
        "probes": len(all_probe),
        "reads": len(bench.load.reads),
        "listings": bench.load.listings,
        "errors": len(errors),
        "ops": {k: [vars(o) for o in v] for k, v in ops.items()},
        "figures_ms": figs,
    }
    md.append(
        f"### Upgrade and failover: longest read stall under load ({rounds} hot upgrades, then {rounds} "
        f"kill -9 + failovers, then {rounds} to a warm standby, of one dedicated daemon)\n"
    )
    titles = {
        "upgrade": "Hot upgrade (`nydus_hybrid.lifecycle.upgrade.hot_upgrade`)",
        "failover": "Failover (SIGKILL, reap, `nydus_hybrid.lifecycle.failover.failover`)",
        "standby-failover": "Failover to a warm standby (started before the SIGKILL; "
        "`nydus_hybrid.lifecycle.failover.failover_to_standby`)",
    }
    for kind in ub.KINDS:
        f = figs[kind]
        md.append(f"{titles[kind]}, {rounds} rounds:\n")
        md.append("| figure | p50 ms | p99 ms | max ms |")
        md.append("|---|---:|---:|---:|")
        for name, label in ub.LABELS.items():
            if name in f:
                v = f[name]
                md.append(f"| {label} | {v['p50']:,.1f} | {v['p99']:,.1f} | {v['max']:,.1f} |")
        md.append("")
    rank = round(0.99 * (rounds - 1))  # the index pct() picks
    md.append(
        f"Probes: {len(all_probe):,} in the whole run (one 4 KiB `pread` of `{ub.PROBE_FILE}` after "
        f"`posix_fadvise(DONTNEED)`, one FUSE READ each), p50 {pct(all_probe, 0.5) * 1e6:,.0f} µs, p99 "
        f"{pct(all_probe, 0.99) * 1e3:,.2f} ms, max {max(all_probe) * 1e3:,.1f} ms; the load "
        f"({len(bench.load.reads):,} reads and `ls -R` runs: 4 reader threads checksumming the image's "
        f"3 files, page cache dropped per read, and one `ls -R` loop) and the probe saw **{len(errors)} "
        f"failed or wrong reads**. Quiet window: {ub.SETTLE_S:.1f} s after the operation, as long as its "
        f"window, nothing happening. p50 / p99 are nearest-rank over the {rounds} operations (p99 = the "
        f"{'largest' if rank == rounds - 1 else f'{rounds - rank}-th largest'}).\n"
    )
    md.append("### Upgrade and failover goals\n")
    md.append("| goal | measured | met |")
    md.append("|---|---|---|")
    for kind, what in (
        ("upgrade", "hot upgrade"),
        ("failover", "failover"),
        ("standby-failover", "failover to a standby"),
    ):
        f = figs[kind]
        s, q, ld = f["probe_stall"], f["quiet_probe"], f["load_stall"]
        gp = f.get("gap_probe")
        extra = (
            f"gap p50 {f['gap']['p50']:.1f} / max {f['gap']['max']:.1f} ms"
            + (f", longest probe over the gap max {gp['max']:.1f} ms" if gp else "")
            if kind == "upgrade"
            else f"SIGKILL -> RUNNING p50 {f['kill_to_running']['p50']:.0f} / max {f['kill_to_running']['max']:.0f} ms"
        )
        goal = ub.goal_ms(kind)
        md.append(
            f"| {what}: max stall under {goal:,.0f} ms | probe stall p50 {s['p50']:.1f}, p99 {s['p99']:.1f}, "
            f"max {s['max']:.1f} ms (quiet windows: p50 {q['p50']:.1f}, max {q['max']:.1f} ms; p50 ratio "
            f"{s['p50'] / max(1e-3, q['p50']):.1f}); {extra}; the load's longest read max {ld['max']:.1f} ms | "
            f"{'yes' if s['max'] < goal else 'no'} |"
        )
        doc["upgrade"][f"{kind}_goal_met"] = s["max"] < goal
    md.append("")


SECTIONS = ("build", "bigfile", "read", "breakdown", "storage", "fuse", "daemon", "upgrade")
STARTUP_LAST = STARTUP_BASELINES[-1][0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=bench_mb(), help="corpus size in MiB (NYDUS_BENCH_MB)")
    ap.add_argument("--bigfile-gb", type=float, default=bigfile_gb(), help="big file size in GiB")
    ap.add_argument(
        "--rounds",
        type=int,
        default=int(os.environ.get("NYDUS_BENCH_ROUNDS", "5")),
        help="timed rounds per build tool (NYDUS_BENCH_ROUNDS, default 5)",
    )
    ap.add_argument("--random-reads", type=int, default=1000, help="4 KiB random reads per round")
    ap.add_argument("--no-extras", action="store_true", help="skip the breakdown and small-file scaling")
    ap.add_argument(
        "--only",
        metavar="SECTIONS",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)",
    )
    ap.add_argument(
        "--storage-mb",
        type=int,
        default=storage_mb(),
        help="image size for the cold/warm registry reads, MiB (NYDUS_BENCH_STORAGE_MB)",
    )
    ap.add_argument(
        "--partial-mb",
        type=int,
        default=partial_mb(),
        help="many-file image of which a fraction is read, MiB (NYDUS_BENCH_PARTIAL_MB)",
    )
    ap.add_argument(
        "--fuse-mb", type=int, default=fb.fuse_big_mb(), help="big file of the FUSE image, MiB (NYDUS_BENCH_FUSE_MB)"
    )
    ap.add_argument(
        "--fuse-files",
        type=int,
        default=fb.fuse_tree_files(),
        help="small files of the FUSE image (NYDUS_BENCH_FUSE_FILES)",
    )
    ap.add_argument(
        "--daemon-rounds",
        type=int,
        default=daemon_rounds(),
        help="daemon start-ups per row (NYDUS_BENCH_DAEMON_ROUNDS)",
    )
    ap.add_argument(
        "--daemon-api-rounds",
        type=int,
        default=daemon_api_rounds(),
        help="bursts of API requests per state (NYDUS_BENCH_DAEMON_API_ROUNDS)",
    )
    ap.add_argument(
        "--daemon-mb",
        type=int,
        default=daemon_mb(),
        help="tree read through the daemon during the API test, MiB (NYDUS_BENCH_DAEMON_MB)",
    )
    ap.add_argument(
        "--upgrade-rounds",
        type=int,
        default=None,
        help="hot upgrades, then as many failovers (NYDUS_BENCH_UPGRADE_ROUNDS; default 20, 10 with CI)",
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="S",
        help="first wait up to S seconds for the machine to be idle (other jobs skew timings)",
    )
    ap.add_argument("--json", help="also write every figure as JSON here")
    ap.add_argument("--md", help="also write the markdown report here")
    a = ap.parse_args(argv)
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if a.no_extras:
        only.discard("breakdown")
    if "storage" in only and storage_missing():
        ap.error(f"storage section: {storage_missing()}")
    if "fuse" in only and fb.fuse_missing():
        ap.error(f"fuse section: {fb.fuse_missing()}")
    if "daemon" in only and daemon_missing():
        ap.error(f"daemon section: {daemon_missing()}")
    if "upgrade" in only and daemon_missing():
        ap.error(f"upgrade section: {daemon_missing()}")
    if a.upgrade_rounds is None:
        import test_upgrade

        a.upgrade_rounds = test_upgrade.upgrade_rounds()

    t_start = time.perf_counter()
    work = fresh_dir(os.path.join(bench_dir(), f"run-{os.getpid()}"))
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    doc: dict = {
        "machine": machine_info(),
        "build": build_identity(),
        "rss_method": rss_method(),
        "settings": vars(a),
    }
    md: List[str] = []

    if only & {"build", "read", "breakdown"}:
        corpus = ensure_corpus(a.mb, log=log)
        log("warming the page cache ...")
        warm_page_cache(corpus.root)
    if "bigfile" in only:
        big = ensure_bigfile(a.bigfile_gb, log=log)
        warm_page_cache(big.root)
    py_rss = python_baseline_rss_kib() / 1024 if "build" in only else None
    if a.wait_idle:
        wait_idle(a.wait_idle)
    doc["busy_before_start"] = busy_fraction()
    doc["loadavg_start"] = loadavg()
    if py_rss is not None:
        doc["python_import_rss_mib"] = py_rss

    # ---------------------------------------------------------------- 1. corpus builds
    if "build" in only:
        log(f"corpus builds: {corpus.mib:.0f} MiB, {len(corpus.files)} files, {a.rounds} rounds")
        tools = [TOOLS[n] for n in ("nydus-hybrid zstd", "nydus-hybrid lz4_block", BASELINE, "tar | zstd -T0 -3")]
        res = interleaved(tools, corpus.root, work, corpus.total_bytes, a.rounds)
        base = res[BASELINE][0]
        md.append(
            f"### Build: {corpus.mib:.0f} MiB corpus, {len(corpus.files)} files "
            f"(median of {a.rounds} interleaved rounds)\n"
        )
        md.append(
            "| tool | MiB/s | wall s | ratio vs mkfs.erofs | peak RSS MiB | CPU s | cores used | kernel share of CPU | "
            "output/input |"
        )
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        doc["corpus"] = {"mib": corpus.mib, "files": len(corpus.files), "builds": {}}
        for t in tools:
            s = res[t.name][0]
            ratio = s.mib_s / base.mib_s
            md.append(
                f"| {cell(t.name)} | {fmt(s.mib_s)} | {s.wall:.2f} | {ratio:.2f} | {fmt(s.peak_rss_mib)} | "
                f"{statistics.median(s.cpus):.2f} | {s.cores_used:.2f} | {s.sys_share:.0%} | {s.out_ratio:.3f} |"
            )
            doc["corpus"]["builds"][t.name] = {
                "mib_s": s.mib_s,
                "walls": s.walls,
                "peak_rss_mib": s.peak_rss_mib,
                "rss_kib": s.rss_kib,
                "cpu_s": s.cpus,
                "sys_cpu_s": s.sys_cpus,
                "out_ratio": s.out_ratio,
                "ratio_vs_erofs": ratio,
            }
        md.append(
            f"\nPeak RSS of a bare `python -c 'import nydus_hybrid'`: {py_rss:.1f} MiB (included in ours, "
            "which run as `python -m nydus_hybrid build`). Cores used = (user + sys CPU s) / wall s; "
            "kernel share = sys / (user + sys).\n"
        )

    # ---------------------------------------------------------------- 2. big file
    if "bigfile" in only:
        log(f"big file: {big.mib / 1024:.2f} GiB")
        btools = [TOOLS["nydus-hybrid zstd"], TOOLS[BASELINE]]
        bres = interleaved(btools, big.root, work, big.total_bytes, 1, sample_rss=True)
        md.append(f"### Build: one {big.mib / 1024:.2f} GiB file (5/8 random, 1/8 text, 2/8 holes), 1 round\n")
        md.append("| tool | MiB/s | wall s | peak RSS MiB | VmRSS MiB at 25/50/75/100% of the run | cores used |")
        md.append("|---|---:|---:|---:|---|---:|")
        doc["bigfile"] = {"mib": big.mib}
        for t in btools:
            s, runs = bres[t.name]
            q = rss_quartiles(runs[0])
            md.append(
                f"| {cell(t.name)} | {fmt(s.mib_s)} | {s.wall:.2f} | {fmt(s.peak_rss_mib)} | "
                f"{' / '.join(fmt(v) for v in q)} | {s.cores_used:.2f} |"
            )
            doc["bigfile"][t.name] = {
                "mib_s": s.mib_s,
                "wall": s.wall,
                "peak_rss_mib": s.peak_rss_mib,
                "vmrss_quartiles": q,
            }
        md.append("")

    # ---------------------------------------------------------------- 3. reads
    if "read" in only:
        log("reads ...")
        import nydus_hybrid

        img_dir = os.path.join(work, "read-image")
        boot, blobs = os.path.join(img_dir, "image.boot"), os.path.join(img_dir, "blobs")
        nydus_hybrid.build(corpus.root, boot, blobs, compressor="zstd", progress=False)
        warm_page_cache(blobs, extra=[boot])
        img = nydus_hybrid.Image.open(boot, blobs)
        img_nv = nydus_hybrid.Image.open(boot, blobs, verify=False)
        seq = [
            ("source: open().read(1 MiB)", lambda: read_source_sequential(corpus.root, corpus.files)),
            ("Image.read(1 MiB)", lambda: read_image_sequential(img, corpus.files)),
            ("Image.read(1 MiB), verify=False", lambda: read_image_sequential(img_nv, corpus.files)),
            ("Image.read(1 MiB), 2 threads", lambda: read_image_threads(img, corpus.files, 2)),
        ]
        md.append(f"### Read: every file of the corpus in 1 MiB blocks, page cache warm (median of {a.rounds})\n")
        md.append("| reader | MiB/s | ratio vs source | cores used |")
        md.append("|---|---:|---:|---:|")
        doc["read_seq"] = {}
        src_rate = None
        for name, fn in seq:
            t, n, cores = timed(fn, a.rounds)
            assert n == corpus.total_bytes, (name, n, corpus.total_bytes)
            rate = n / MiB / t
            src_rate = src_rate or rate
            md.append(f"| {name} | {fmt(rate)} | {rate / src_rate:.2f} | {cores:.2f} |")
            doc["read_seq"][name] = rate
        pairs = random_reads(corpus.files, a.random_reads)
        fds = SourceFds(corpus.root, pairs)
        rnd = [
            ("source: os.pread(4 KiB)", lambda: read_source_random(fds, pairs)),
            ("Image.read(4 KiB)", lambda: read_image_random(img, pairs)),
            ("Image.read(4 KiB), verify=False", lambda: read_image_random(img_nv, pairs)),
        ]
        md.append(f"\n### Read: {a.random_reads} random 4 KiB reads (4 KiB-aligned, files weighted by size)\n")
        md.append("| reader | reads/s | MiB/s | µs/read | ratio vs pread |")
        md.append("|---|---:|---:|---:|---:|")
        doc["read_random"] = {}
        src_rate = None
        for name, fn in rnd:
            t, n, _ = timed(fn, a.rounds)
            per_s = a.random_reads / t
            src_rate = src_rate or per_s
            md.append(f"| {name} | {fmt(per_s, 0)} | {fmt(n / MiB / t)} | {1e6 / per_s:.1f} | {per_s / src_rate:.4f} |")
            doc["read_random"][name] = per_s
        fds.close()
        md.append("")

    # ---------------------------------------------------------------- 4. breakdown
    if "breakdown" in only:
        log("breakdown by subtree ...")
        ours = TOOLS["nydus-hybrid zstd"]
        lz4 = TOOLS["nydus-hybrid lz4_block"]
        md.append("### Where the time goes (median of 2 interleaved rounds)\n")
        md.append("By kind of input (each subtree of the corpus built alone):\n")
        md.append(
            "| subtree | MiB | files | ours zstd MiB/s | peak RSS MiB | cores | ours lz4_block MiB/s | "
            "mkfs.erofs MiB/s | erofs peak RSS MiB | zstd/erofs | lz4_block/erofs |"
        )
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        doc["breakdown_subtree"] = {}
        for sub, what in (("text", "text-like"), ("bin", "random"), ("dup", "duplicates"), ("small", "small files")):
            src = os.path.join(corpus.root, sub)
            files = [f for f in corpus.files if f[0].startswith(sub + "/")]
            nbytes = sum(s for _, s in files)
            r = interleaved([ours, lz4, TOOLS[BASELINE]], src, work, nbytes, 2)
            o, l4, e = r[ours.name][0], r[lz4.name][0], r[BASELINE][0]
            md.append(
                f"| {sub}/ ({what}) | {nbytes / MiB:.0f} | {len(files)} | {fmt(o.mib_s)} | {fmt(o.peak_rss_mib)} | "
                f"{o.cores_used:.2f} | {fmt(l4.mib_s)} | {fmt(e.mib_s)} | {fmt(e.peak_rss_mib)} | "
                f"{o.mib_s / e.mib_s:.2f} | {l4.mib_s / e.mib_s:.2f} |"
            )
            doc["breakdown_subtree"][sub] = {
                "mib_s": o.mib_s,
                "rss": o.peak_rss_mib,
                "cores": o.cores_used,
                "lz4_mib_s": l4.mib_s,
                "erofs_mib_s": e.mib_s,
                "erofs_rss": e.peak_rss_mib,
            }

        log("variants ...")

        def variant(name: str, extra: Sequence[str] = (), env=None, comp="zstd", out_root=None) -> Tool:
            def make(s, o):
                if out_root:
                    o = os.path.join(out_root, f"nydus-bench-{os.getpid()}")
                    fresh_dir(o)
                return [nydus_cmd(s, o, comp)[0] + list(extra)]

            return Tool(name, make, ours=True, env=env)

        variants = [
            TOOLS[BASELINE],
            variant("zstd (as above)"),
            variant("-c none (no compression)", comp="none"),
            variant("-S 64K (64 KiB chunks)", extra=["-S", "64K"]),
            variant("RAYON_NUM_THREADS=1", env={"RAYON_NUM_THREADS": "1"}),
        ]
        if shm:
            variants.append(variant("output on tmpfs (/dev/shm)", out_root=shm))

        r = interleaved(variants, corpus.root, work, corpus.total_bytes, 2)
        if shm:
            fresh_dir(os.path.join(shm, f"nydus-bench-{os.getpid()}"))
            os.rmdir(os.path.join(shm, f"nydus-bench-{os.getpid()}"))
        md.append(
            "\nVariants of our build on the whole corpus, with mkfs.erofs in the same interleave "
            "(median of 2 rounds):\n"
        )
        md.append(
            "| variant | MiB/s | ratio vs mkfs.erofs | wall s | CPU s | cores used | kernel share of CPU | "
            "peak RSS MiB |"
        )
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        doc["breakdown_variants"] = {}
        vbase = r[BASELINE][0]
        for v in variants:
            s = r[v.name][0]
            md.append(
                f"| {cell(v.name)} | {fmt(s.mib_s)} | {s.mib_s / vbase.mib_s:.2f} | {s.wall:.2f} | "
                f"{statistics.median(s.cpus):.2f} | {s.cores_used:.2f} | {s.sys_share:.0%} | {fmt(s.peak_rss_mib)} |"
            )
            doc["breakdown_variants"][v.name] = {
                "mib_s": s.mib_s,
                "wall": s.wall,
                "cpu": s.cpus,
                "sys": s.sys_cpus,
                "rss": s.peak_rss_mib,
            }

        log("parallel scaling on text/ ...")
        src = os.path.join(corpus.root, "text")
        nbytes = sum(sz for rel, sz in corpus.files if rel.startswith("text/"))
        scal = [
            variant("nydus-hybrid zstd (2 rayon threads)"),
            variant("nydus-hybrid zstd, RAYON_NUM_THREADS=1", env={"RAYON_NUM_THREADS": "1"}),
            Tool("tar | zstd -T0 -3", tar_zstd_cmd),
            Tool(
                "tar | zstd -T1 -3",
                lambda s, o: [
                    ["tar", "-C", s, "-cf", "-", "."],
                    ["zstd", "-T1", "-3", "-q", "-o", os.path.join(o, "out.tar.zst")],
                ],
            ),
        ]
        r = interleaved(scal, src, work, nbytes, 2)
        md.append(
            f"\nParallel scaling where compression dominates (text/ only, {nbytes / MiB:.0f} MiB, "
            "median of 2 interleaved rounds):\n"
        )
        md.append("| build | MiB/s | CPU s | cores used |")
        md.append("|---|---:|---:|---:|")
        doc["text_scaling"] = {}
        for v in scal:
            s_ = r[v.name][0]
            md.append(f"| {cell(v.name)} | {fmt(s_.mib_s)} | {statistics.median(s_.cpus):.2f} | {s_.cores_used:.2f} |")
            doc["text_scaling"][v.name] = {"mib_s": s_.mib_s, "cpu": s_.cpus, "wall": s_.walls}

        log("small-file RSS scaling ...")
        md.append("\nPeak RSS against the number of small files (one 4 MiB file, then N files of 512 B):\n")
        md.append(
            "| N small files | ours zstd peak RSS MiB | ours wall s | mkfs.erofs peak RSS MiB | mkfs.erofs wall s |"
        )
        md.append("|---:|---:|---:|---:|---:|")
        doc["small_file_rss"] = {}
        for n in (1000, 4000, 8000):
            tree = ensure_tiny_tree(n)
            r = interleaved([ours, TOOLS[BASELINE]], tree.root, work, tree.total_bytes, 1)
            o, e = r[ours.name][0], r[BASELINE][0]
            md.append(f"| {n} | {fmt(o.peak_rss_mib)} | {o.wall:.2f} | {fmt(e.peak_rss_mib)} | {e.wall:.2f} |")
            doc["small_file_rss"][n] = {
                "ours_rss": o.peak_rss_mib,
                "ours_wall": o.wall,
                "erofs_rss": e.peak_rss_mib,
                "erofs_wall": e.wall,
            }
        md.append("")

    # ---------------------------------------------------------------- 5. storage
    if "storage" in only:
        storage_section(a, work, md, doc)

    # ---------------------------------------------------------------- 6. fuse
    if "fuse" in only:
        fuse_section(a, work, md, doc)

    # ---------------------------------------------------------------- 7. daemon
    if "daemon" in only:
        daemon_section(a, work, md, doc)

    # ---------------------------------------------------------------- 8. upgrade
    if "upgrade" in only:
        upgrade_section(a, work, md, doc)

    # ---------------------------------------------------------------- goals
    if "build" in only and "bigfile" in only:
        z = res["nydus-hybrid zstd"][0]
        ours_rss = max(
            [res[n][0].peak_rss_mib for n in ("nydus-hybrid zstd", "nydus-hybrid lz4_block")]
            + [bres["nydus-hybrid zstd"][0].peak_rss_mib]
        )
        speed_ok = z.mib_s >= base.mib_s
        rss_ok = ours_rss <= RSS_GOAL_MIB
        md.append("### Goals\n")
        md.append("| goal | measured | met |")
        md.append("|---|---|---|")
        cpu_ratio = statistics.median(z.cpus) / statistics.median(base.cpus)
        md.append(
            f"| zstd build at least as fast as mkfs.erofs -zlz4 | {fmt(z.mib_s)} vs {fmt(base.mib_s)} MiB/s "
            f"(ratio {z.mib_s / base.mib_s:.2f}); CPU time {statistics.median(z.cpus):.2f} vs "
            f"{statistics.median(base.cpus):.2f} s ({cpu_ratio:.2f}x) | {'yes' if speed_ok else 'no'} |"
        )
        md.append(
            f"| peak RSS <= {RSS_GOAL_MIB} MiB for any input | corpus zstd {fmt(z.peak_rss_mib)} MiB, "
            f"lz4_block {fmt(res['nydus-hybrid lz4_block'][0].peak_rss_mib)} MiB; "
            f"big file {fmt(bres['nydus-hybrid zstd'][0].peak_rss_mib)} MiB | {'yes' if rss_ok else 'no'} |"
        )
        doc["goals"] = {
            "speed_ratio": z.mib_s / base.mib_s,
            "cpu_ratio": cpu_ratio,
            "speed_met": speed_ok,
            "max_rss_mib": ours_rss,
            "rss_met": rss_ok,
        }

    doc["loadavg_end"] = loadavg()
    ident_end = build_identity()
    changed = ident_end.get("core_sha256") != doc["build"].get("core_sha256")
    if ident_end != doc["build"]:
        doc["build_end"] = ident_end
    doc["elapsed_s"] = time.perf_counter() - t_start
    m = doc["machine"]
    header = (
        f"Machine: {m.get('cpu', '?')}, nproc {m['nproc']}, {m.get('mem', '?')} RAM, kernel {m['kernel']}, "
        f"Python {m['python']}, erofs-utils {m.get('erofs-utils', '?')}, zstd {m.get('zstd', '?')}. "
        f"CPUs busy just before the start {doc['busy_before_start']:.0%}; load average at start "
        f"{doc['loadavg_start']}, at end {doc['loadavg_end']}. "
        f"Peak RSS via {doc['rss_method']}. Total run {doc['elapsed_s']:.0f} s.\n\n"
        f"Measured: nydus-hybrid at git {doc['build'].get('git_head', '?')}, extension module "
        f"sha256 {doc['build'].get('core_sha256', '?')} ({doc['build'].get('core_mtime', '?')}).\n"
    )
    if ident_end.get("git_head") != doc["build"].get("git_head") and not changed:
        header += (
            f"\n(git HEAD moved to {ident_end.get('git_head')} during the run; the extension module "
            "did not change, so all figures are from the one build.)\n"
        )
    if changed:
        header += (
            f"\n**WARNING: the extension module changed during this run** (now "
            f"{ident_end.get('core_sha256')} from {ident_end.get('core_mtime')}, git {ident_end.get('git_head')}); "
            "the figures mix two builds. Run again.\n"
        )
    text = header + "\n" + "\n".join(md) + "\n"
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
    fresh_dir(work)
    os.rmdir(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
