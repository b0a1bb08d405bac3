"""Our daemon and the real nydusd 2.2 (scripts/install-nydus-reference.sh) side by side, in
the same run, on the same image, config and flags (dedicated FUSE daemon, localfs +
blobcache, 4 threads).

* start-up: exec -> the first file reads back whole through the mount (polled every
  0.5 ms), and exec -> GET /api/v1/daemon says RUNNING; NYDUS_BENCH_DAEMON_ROUNDS rounds
  (20), ours and nydusd's interleaved so that both see the same host. The ratios of the
  medians are the figures (issue 14's goals: first file within 8x nydusd, RUNNING within
  100 ms).

Figures go to each benchmark's extra_info and to benches/README.md; nothing is asserted."""

from __future__ import annotations

import os
import shutil

import pytest

from benchlib.daemon import DaemonStart, daemon_image, daemon_missing
from benchlib.env import daemon_rounds
from benchlib.report import pct

NYDUSD = shutil.which("nydusd") or os.path.expanduser("~/.cache/nydus-hybrid/nydus-ref/bin/nydusd")
_missing = daemon_missing() or (
    None if os.access(NYDUSD, os.X_OK) else "no nydusd: run scripts/install-nydus-reference.sh"
)
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture(scope="module")
def image(workdir):
    return daemon_image(os.path.join(workdir, "vs-nydusd-image"))


def test_startup_side_by_side(benchmark, image, workdir):
    benchmark.group = "vs nydusd: exec -> first file readable, exec -> RUNNING"
    rel = min(image.files, key=lambda r: len(image.files[r]))  # the smallest file: one read
    probe = (rel, image.files[rel])
    runs = {"ours": [], "nydusd": []}

    def one_round():
        for who in ("nydusd", "ours"):
            d = DaemonStart(
                os.path.join(workdir, f"vs-{who}"),
                image,
                poll=0.0005,
                nydusd=NYDUSD if who == "nydusd" else None,
                probe=probe,
            )
            try:
                runs[who].append(d.start())
            finally:
                d.stop()

    benchmark.pedantic(one_round, rounds=daemon_rounds(), iterations=1, warmup_rounds=1)
    info = benchmark.extra_info
    for who, rs in runs.items():
        rs = rs[1:]  # the warm-up round
        info[f"{who}_file_p50_ms"] = round(pct([r.file_s for r in rs], 0.5) * 1000, 1)
        info[f"{who}_running_p50_ms"] = round(pct([r.running_s for r in rs], 0.5) * 1000, 1)
        info[f"{who}_file_p90_ms"] = round(pct([r.file_s for r in rs], 0.9) * 1000, 1)
    info["file_ratio_ours_vs_nydusd"] = round(info["ours_file_p50_ms"] / info["nydusd_file_p50_ms"], 2)
    info["running_ratio_ours_vs_nydusd"] = round(info["ours_running_p50_ms"] / info["nydusd_running_p50_ms"], 2)
    print(info)
