"""The daemon (`python -m nydus_hybrid.daemon`, nydusd's CLI and HTTP API on a unix socket),
started and spoken to with the compat tests' helpers (tests/helpers/daemons.py):

* start-up: exec -> the API socket accepts a connection -> GET /api/v1/daemon answers
  "RUNNING" (polled every 1 ms), for a dedicated daemon with a bootstrap mounted via FUSE
  and a shared daemon with no bootstrap; side by side, `python -c` doing nothing (the
  floor), importing `nydus_hybrid._core`, `http.server` and `nydus_hybrid.daemon.main`
  (exec -> the code has run). p50 / p90 / max over NYDUS_BENCH_DAEMON_ROUNDS starts (20),
  and the ratio to the floor. Goal: RUNNING within 300 ms.
* API latency: 100 concurrent GET /api/v1/metrics (aiohttp, one unix connection each) and
  25 sequential ones, with the mount idle and while 4 reader processes read the mounted
  files in a loop (page cache dropped per file with posix_fadvise DONTNEED, so the reads
  reach the daemon); p50 / p99 and the loaded / idle ratio; the same requests to a bare
  aiohttp server in another process (the control: what the load does to any small Python
  server here); the readers' MiB/s while the requests run and with no requests.

Figures go to each benchmark's extra_info; nothing about speed is asserted.
"""

from __future__ import annotations

import os
import statistics

import pytest

from benchlib.corpus import ensure_daemon_tree
from benchlib.daemon import (
    DAEMON_STARTUP_GOAL_MS,
    DEDICATED,
    FLOOR,
    SHARED,
    STARTUP_BASELINES,
    DaemonStart,
    daemon_image,
    daemon_missing,
    time_python,
)
from benchlib.daemon_load import (
    API_CONCURRENCY,
    API_READERS,
    API_STATES,
    CONTROL,
    DAEMON,
    ApiLatency,
    DaemonLoad,
    api_latency_rounds,
)
from benchlib.env import daemon_api_rounds, daemon_rounds
from benchlib.report import MiB, pct

_missing = daemon_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

ROWS = [name for name, _ in STARTUP_BASELINES] + [DEDICATED, SHARED]
IDS = ["floor", "import-core", "import-http-server", "import-daemon-main", "dedicated", "shared"]


def _ms(xs):
    return {
        "p50_ms": round(pct(xs, 0.5) * 1000, 1),
        "p90_ms": round(pct(xs, 0.9) * 1000, 1),
        "max_ms": round(max(xs) * 1000, 1),
    }


@pytest.fixture(scope="module")
def startup_image(workdir):
    return daemon_image(os.path.join(workdir, "daemon-startup-image"))


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_daemon_startup(benchmark, startup_image, workdir, results, row):
    benchmark.group = "daemon: exec -> RUNNING (baselines: exec -> the code has run)"
    run = os.path.join(workdir, "daemon-startup")
    runs, live = [], []

    def stop_previous():
        while live:
            live.pop().stop()

    if row in (DEDICATED, SHARED):
        image = startup_image if row == DEDICATED else None

        def start():  # timed: exec -> RUNNING; the stop happens in the next round's setup
            live.append(DaemonStart(run, image))
            runs.append(live[-1].start())
    else:
        code = dict(STARTUP_BASELINES)[row]

        def start():
            runs.append(time_python(code))

    try:
        benchmark.pedantic(start, setup=stop_previous, rounds=daemon_rounds(), iterations=1, warmup_rounds=1)
    finally:
        stop_previous()
    runs = runs[1:]
    ready = [r.running_s for r in runs]
    results[("startup", row)] = pct(ready, 0.5)
    info = benchmark.extra_info
    info.update({"runs": len(runs), **_ms(ready)})
    floor = results.get(("startup", FLOOR))
    if floor:
        info["p50_ratio_vs_floor"] = round(pct(ready, 0.5) / floor, 2)
    if runs[0].socket_s is not None:
        info["socket"] = _ms([r.socket_s for r in runs])
        info["cpu_s_at_running_p50"] = statistics.median(r.cpu_s for r in runs if r.cpu_s is not None)
        info["stop_ms_p50"] = round(statistics.median(r.stop_s for r in runs if r.stop_s is not None) * 1000, 1)
        info["mounted"] = all(r.mounted for r in runs)
        waits = [r.runq_wait_s for r in runs if r.runq_wait_s is not None]
        if waits:
            info["runq_wait_ms_p50"] = round(statistics.median(waits) * 1000, 1)
            info["runq_wait_ms_max"] = round(max(waits) * 1000, 1)
        info["disk_read_bytes_max"] = max((r.disk_read_bytes or 0) for r in runs)
        info["goal_300ms_p90_met"] = pct(ready, 0.9) * 1000 < DAEMON_STARTUP_GOAL_MS
    else:
        info["exit_p50_ms"] = round(pct([r.exit_s for r in runs], 0.5) * 1000, 1)


@pytest.fixture(scope="module")
def daemon_load(workdir):
    tree = ensure_daemon_tree(log=print)
    load = DaemonLoad(tree, os.path.join(workdir, "daemon-load"), log=print)
    try:
        yield load
    finally:
        load.close()


def test_daemon_api_latency(benchmark, daemon_load, results):
    """One interleaved run (idle burst, readers alone, loaded burst, per round); the timed
    value is the whole run, the figures are in extra_info."""
    rounds = daemon_api_rounds()
    benchmark.group = f"daemon: {API_CONCURRENCY} concurrent GET /api/v1/metrics, idle vs {API_READERS} FUSE readers"
    holder = {}
    benchmark.pedantic(
        lambda: holder.update(r=api_latency_rounds(daemon_load, rounds)),
        rounds=1,
        iterations=1,
        warmup_rounds=0,
    )
    r: ApiLatency = holder["r"]
    info = benchmark.extra_info
    info["rounds"] = rounds
    for target, tag in ((DAEMON, "daemon"), (CONTROL, "control")):
        for state in API_STATES:
            lat = r.concurrent(target, state)
            info[f"{tag}_{state}_concurrent_p50_us"] = round(pct(lat, 0.5), 1)
            info[f"{tag}_{state}_concurrent_p99_us"] = round(pct(lat, 0.99), 1)
            info[f"{tag}_{state}_burst_wall_ms_p50"] = round(statistics.median(r.burst_wall[(target, state)]) * 1000, 2)
            info[f"{tag}_{state}_sequential_p50_us"] = round(pct(r.seq[(target, state)], 0.5), 1)
            info[f"{tag}_{state}_sequential_p99_us"] = round(pct(r.seq[(target, state)], 0.99), 1)
        for k in ("concurrent_p50", "concurrent_p99", "sequential_p50", "sequential_p99"):
            info[f"{tag}_{k}_loaded_over_idle"] = round(info[f"{tag}_loaded_{k}_us"] / info[f"{tag}_idle_{k}_us"], 2)
    info["readers_mib_s_during_requests"] = round(r.rate(r.read_during), 1)
    info["readers_mib_s_alone"] = round(r.rate(r.read_alone), 1)
    info["readers_during_over_alone"] = round(r.rate(r.read_during) / r.rate(r.read_alone), 3)
    info["daemon_data_read_over_reader_bytes"] = round(r.data_read / max(1, r.reader_bytes), 3)
    info["idle_daemon_cpu_us_per_request"] = round(sum(r.idle_cpu) / max(1, r.idle_requests) * 1e6, 1)
    info["idle_control_cpu_us_per_request"] = round(sum(r.control_idle_cpu) / max(1, r.idle_requests) * 1e6, 1)
    info["tree_mib"] = round(daemon_load.tree.total_bytes / MiB, 1)
    # the readers' bytes went through the daemon, not the page cache
    assert r.data_read >= r.reader_bytes * 0.9, (r.data_read, r.reader_bytes)
