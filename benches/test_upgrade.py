"""Hot upgrade and failover of the daemon under read load: how long a reader stalls.

The issue's figure is "stall time per upgrade and per failover: p50, p99 and max", with the
goals "max stall under 100 ms for an upgrade, and under 1 s for a failover". Set-up: the
compat tests' small image (tests/helpers/daemons.py's BuiltImage, via benchlib.daemon.daemon_image),
our `Supervisor` in this process, and a dedicated daemon (daemons.Daemon, v1 localfs +
blobcache config, `--id d1 --supervisor S`). While it serves:

* **load**: `tests/helpers/load.py`'s ReadLoad (4 reader threads re-reading and checksumming
  every file with its page cache dropped first, plus one `ls -R` loop); every failure is
  kept, and every read's (start, seconds).
* **probe**: one more thread with hello.txt open, doing `posix_fadvise(DONTNEED)` then a
  4 KiB `pread` in a tight loop, so each probe is one FUSE READ round trip (~100 us idle);
  (start, seconds) of each kept. **The stall of an operation = the longest probe that was in
  progress at any time between its start and the end of the first probe started after it
  finished** (the daemon serves again). The load's longest read over the same window is a
  secondary figure: it includes sha256 and CPU contention on this 2-vCPU machine.
* **hot upgrade** (`nydus_hybrid.lifecycle.upgrade.hot_upgrade`): window = the call (sendfd, spawn of
  the successor with `--upgrade`, takeover, exit of the old one, start of the new one, the old
  one gone) + the first probe after it. Also its `gap_ms` (nobody reads /dev/fuse: from
  asking the old daemon to exit until the new one's start answered), `takeover_ms`,
  `total_ms`; from the two daemons' logs, the time from the old one's workers stopping to
  the new one's starting (the real no-reader window, inside `gap_ms`), and the stall split
  into the longest probe overlapping the gap and the longest one elsewhere in the upgrade.
* **failover**: SIGKILL the daemon, reap it, `nydus_hybrid.lifecycle.failover.failover(argv, ...)`
  with the daemon's argv; window = from the kill until RUNNING + the first probe after it.
  Also the parts: kill -> reaped, the successor's exec -> RUNNING (`total_ms`, of which
  `takeover_ms`; a bare daemon start-up is ~200 ms here, see the Daemon section of
  README.md), RUNNING -> first probe answered.
* **baseline**: after each operation (the mount serving again, 0.2 s to settle) a quiet
  window of the same length with nothing happening: the probe's and the load's longest
  latency there, so a stall can be read as a ratio to what the load alone does.

NYDUS_BENCH_UPGRADE_ROUNDS upgrades, then as many failovers (default 20, 10 with CI). The
successors' logs (one file per operation) hold their `takeover` event (`ms`: the restore
inside the daemon). Figures go to extra_info; only correctness is asserted (no failed read,
no wrong bytes, the mount still there), never a time.

The machinery here is shared with `run_all.py --only upgrade` (it imports this module).
"""

from __future__ import annotations

import array
import bisect
import calendar
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import pytest

from benchlib.corpus import fresh_dir
from benchlib.daemon import daemon_image, daemon_missing
from benchlib.env import IN_CI
from benchlib.measure import reap
from benchlib.pagecache import warm_page_cache
from benchlib.report import pct

UPGRADE_GOAL_MS = 100.0
FAILOVER_GOAL_MS = 1000.0
KINDS = ("upgrade", "failover", "standby-failover")
PROBE_FILE = "hello.txt"
SETTLE_S = 0.2  # after an operation, before its quiet window
GAP_SLACK_S = 0.003  # either side of an upgrade's gap located from the log (1 ms timestamps)


def upgrade_rounds() -> int:
    """Hot upgrades, then as many failovers (NYDUS_BENCH_UPGRADE_ROUNDS; default 20, 10 with CI)."""
    return max(1, int(os.environ.get("NYDUS_BENCH_UPGRADE_ROUNDS", "10" if IN_CI else "20")))


# --------------------------------------------------------------------------- the probe


class Probe:
    """One thread: pread 4 KiB of one open file in a tight loop, its page cache dropped
    before each read (one FUSE READ per probe). Keeps (start, seconds) of every probe on the
    monotonic clock, and every failure."""

    def __init__(self, path: str, expect: bytes):
        self.path = path
        self.expect = expect[:4096]
        self.starts = array.array("d")
        self.lats = array.array("d")
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.errors.append(f"still blocked {timeout:.0f}s after stop")

    def _run(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    data = os.pread(fd, 4096, 0)
                    if data != self.expect:
                        self.errors.append(f"{t0:.3f}: wrong bytes ({len(data)})")
                except OSError as e:
                    self.errors.append(f"{t0:.3f}: {e}")
                    time.sleep(0.001)
                t1 = time.monotonic()
                self.starts.append(t0)  # one thread, so starts are sorted
                self.lats.append(t1 - t0)
        finally:
            os.close(fd)

    def __len__(self) -> int:
        return len(self.lats)

    def longest(self, since: float, until: float) -> float:
        """The longest probe in progress at any time in [since, until] (probes do not overlap)."""
        n = len(self.lats)
        i0 = max(0, bisect.bisect_right(self.starts, since, 0, n) - 1)
        i1 = bisect.bisect_right(self.starts, until, 0, n)
        return max((self.lats[i] for i in range(i0, i1) if self.starts[i] + self.lats[i] >= since), default=0.0)

    def longest_outside(self, since: float, until: float, a: float, b: float) -> float:
        """The longest probe in progress in [since, until] that was not in progress in [a, b]."""
        n = len(self.lats)
        i0 = max(0, bisect.bisect_right(self.starts, since, 0, n) - 1)
        i1 = bisect.bisect_right(self.starts, until, 0, n)
        best = 0.0
        for i in range(i0, i1):
            s, d = self.starts[i], self.lats[i]
            if s + d >= since and (s > b or s + d < a):
                best = max(best, d)
        return best

    def count(self, since: float, until: float) -> int:
        n = len(self.lats)
        return bisect.bisect_right(self.starts, until, 0, n) - bisect.bisect_left(self.starts, since, 0, n)

    def answered_after(self, t: float, timeout: float = 30.0) -> float:
        """Wait for the first probe started at or after `t` to finish; returns its end."""
        deadline = time.monotonic() + timeout
        while True:
            n = len(self.lats)
            i = bisect.bisect_left(self.starts, t, 0, n)
            if i < n:
                return self.starts[i] + self.lats[i]
            if time.monotonic() > deadline:
                raise AssertionError(f"no probe answered within {timeout:.0f} s")
            time.sleep(0.0005)


# --------------------------------------------------------------------------- one operation


@dataclass
class Op:
    kind: str  # "upgrade" or "failover"
    window_s: float  # start of the operation -> the first probe after it answered
    probe_stall_s: float  # the longest probe in progress in the window
    load_stall_s: float  # the load's longest read (or ls -R) in progress in the window
    quiet_probe_s: float  # the same two over a quiet window of the same length, right after
    quiet_load_s: float
    probes: int  # probes started in the window
    total_ms: float  # Replacement.total_ms (failover: the successor's exec -> RUNNING)
    takeover_ms: float  # Replacement.takeover_ms (PUT takeover -> READY)
    gap_ms: float = 0.0  # upgrade: nobody reads /dev/fuse (exit asked -> start answered)
    kill_to_reaped_ms: float = 0.0  # failover: SIGKILL -> the dead daemon reaped
    kill_to_running_ms: float = 0.0  # failover: SIGKILL -> the successor RUNNING
    running_to_probe_ms: float = 0.0  # RUNNING (the call returned) -> the first probe after it answered
    restore_ms: Optional[float] = None  # the successor's own `takeover` event: its restore
    # failover, from the successor's log (wall-clock `ts`, 1 ms resolution):
    startup_ms: Optional[float] = None  # reaped (= its exec) -> its API socket listens (`api_ready`)
    api_to_running_ms: Optional[float] = None  # `api_ready` -> RUNNING seen (INIT poll, takeover, start)
    # upgrade: the longest probe overlapping the gap (located from the successor's log, +-3 ms)
    # and the longest one in the window that did not
    gap_probe_s: Optional[float] = None
    outside_gap_probe_s: Optional[float] = None
    # upgrade: the old daemon's workers stopped -> the new one's started, from the `state`
    # events (stop, start) in their two logs, 1 ms timestamps: when nobody reads /dev/fuse
    workers_gap_ms: Optional[float] = None


def log_events(log_path: str) -> List[dict]:
    """A daemon's log events (JSON lines on its stderr), each with `t`: its `ts` (wall clock,
    truncated to the ms) as seconds since the epoch."""
    out: List[dict] = []
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(ev, dict):
                    continue
                m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z", str(ev.get("ts", "")))
                if m:
                    ev["t"] = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + int(m.group(2)) / 1000
                    out.append(ev)
    except OSError:
        pass
    return out


def first_event(evs: Sequence[dict], name: str, **match) -> dict:
    """The first event called `name` whose fields include `match` ({} if none)."""
    for ev in evs:
        if ev.get("event") == name and all(ev.get(k) == v for k, v in match.items()):
            return ev
    return {}


class UpgradeBench:
    """A supervisor, a dedicated daemon on the test image with its successors, the read
    load and the probe, all running until `close()` (which always leaves nothing mounted)."""

    def __init__(self, workdir: str, log: Callable[[str], None] = lambda s: None, readers: int = 4):
        from nydus_hybrid.lifecycle.supervisor import PUSH_ENV, Supervisor
        from tests.helpers import daemons, load

        self.dt = daemons
        self.log = log
        self.workdir = Path(fresh_dir(workdir))
        self.logs = self.workdir / "logs"
        self.logs.mkdir()
        self.image = daemon_image(str(self.workdir / "image"))
        warm_page_cache(str(self.image.blobs), extra=[str(self.image.boot)])
        self.sup = Supervisor(str(self.workdir / "supervisor" / "d1.sock")).start()
        # ours takes pushes, as under the manager: the daemon and its successors push
        # their state once they serve, so a kill right after a start can fail over
        os.environ[PUSH_ENV] = "1"
        self.daemon = None
        self.load = None
        self.probe = None
        self.procs: List[subprocess.Popen] = []  # every successor
        self.ops: List[Op] = []
        self.seq = 0
        try:
            run = self.workdir / "d"
            cfg = self.dt.v1_config("/", self.image.blobs, run / "cache")
            self.daemon = self.dt.Daemon(
                run, config=cfg, bootstrap=self.image.boot, extra=["--id", "d1", "--supervisor", self.sup.path]
            )
            self.mnt = str(self.daemon.mnt)
            self.argv = list(self.daemon.argv)
            self.apisock = self.daemon.sock
            self.current: subprocess.Popen = self.daemon.proc
            self.current_log = str(self.daemon.log)  # the serving daemon's stderr
            if not self.sup.wait_for_state(0):
                raise RuntimeError("the daemon pushed no state to the supervisor")
            self.load = load.ReadLoad([self.mnt], self.image.files, readers=readers).__enter__()
            self.probe = Probe(os.path.join(self.mnt, PROBE_FILE), self.image.files[PROBE_FILE]).__enter__()
            self.load.wait_reads(20)
            self.probe.answered_after(time.monotonic())
            time.sleep(0.5)  # let the load reach its steady state before the first window
        except BaseException:
            self.close()
            raise

    @property
    def errors(self) -> List[str]:
        out = [f"probe: {e}" for e in (self.probe.errors if self.probe else [])]
        out += [f"load: {e}" for e in (self.load.errors if self.load else [])]
        return out

    def _finish(self, kind: str, t0: float, t_running: float, r, **extra) -> Op:
        t_end = self.probe.answered_after(t_running)
        self.load.wait_reads(8)  # the readers get through again, as the compat tests check
        if not self.dt.is_mounted(self.mnt):
            raise AssertionError(f"{kind}: the mount went away")
        window = t_end - t0
        time.sleep(SETTLE_S)
        q0 = time.monotonic()
        time.sleep(window)
        q1 = time.monotonic()
        self.probe.answered_after(q1)
        log_path, old_log = extra.pop("log_path"), self.current_log
        evs = log_events(log_path)
        self.current_log = log_path
        wall_reaped, wall_running = extra.pop("wall_reaped", None), extra.pop("wall_running")
        to_mono = time.monotonic() - time.time()
        api = first_event(evs, "api_ready").get("t")
        if kind == "failover" and api is not None:
            extra["startup_ms"] = (api - wall_reaped) * 1000
            extra["api_to_running_ms"] = (wall_running - api) * 1000
        started = first_event(evs, "state", input="start").get("t")
        if kind == "upgrade" and started is not None:
            # The gap ends when the successor's workers run (its `state` event for `start`,
            # logged right after; ts truncated to the ms): probes overlapping it vs the rest.
            g1 = started + to_mono + GAP_SLACK_S
            g0 = started + to_mono - r.gap_ms / 1000 - GAP_SLACK_S
            extra["gap_probe_s"] = self.probe.longest(g0, g1)
            extra["outside_gap_probe_s"] = self.probe.longest_outside(t0, t_end, g0, g1)
            stopped = first_event(log_events(old_log), "state", input="stop").get("t")
            if stopped is not None:
                extra["workers_gap_ms"] = (started - stopped) * 1000
        op = Op(
            kind,
            window,
            self.probe.longest(t0, t_end),
            self.load.longest_stall(t0, t_end),
            self.probe.longest(q0, q1),
            self.load.longest_stall(q0, q1),
            self.probe.count(t0, t_end),
            r.total_ms,
            r.takeover_ms,
            running_to_probe_ms=(t_end - t_running) * 1000,
            restore_ms=first_event(evs, "takeover").get("ms"),
            **extra,
        )
        self.ops.append(op)
        return op

    def upgrade(self) -> Op:
        from nydus_hybrid.lifecycle import upgrade

        self.seq += 1
        log_path = str(self.logs / f"{self.seq:03d}-upgrade.log")
        t0 = time.monotonic()
        r = upgrade.hot_upgrade(self.apisock, self.sup, log_path=log_path)
        t_running, wall_running = time.monotonic(), time.time()
        self.apisock, self.current = r.apisock, r.process
        self.procs.append(r.process)
        return self._finish("upgrade", t0, t_running, r, gap_ms=r.gap_ms, log_path=log_path, wall_running=wall_running)

    def failover(self) -> Op:
        from nydus_hybrid.lifecycle import failover, upgrade

        self.seq += 1
        log_path = str(self.logs / f"{self.seq:03d}-failover.log")
        pid = upgrade.daemon_pid(self.apisock)
        if pid != self.current.pid:
            raise AssertionError(f"the daemon at {self.apisock} is pid {pid}, not our child {self.current.pid}")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        self.current.wait(10)
        t_dead, wall_reaped = time.monotonic(), time.time()
        r = failover.failover(self.argv, self.apisock, self.sup, log_path=log_path)
        t_running, wall_running = time.monotonic(), time.time()
        self.current = r.process
        self.procs.append(r.process)
        return self._finish(
            "failover",
            t0,
            t_running,
            r,
            kill_to_reaped_ms=(t_dead - t0) * 1000,
            kill_to_running_ms=(t_running - t0) * 1000,
            log_path=log_path,
            wall_reaped=wall_reaped,
            wall_running=wall_running,
        )

    def standby_failover(self) -> Op:
        """Like `failover`, with the successor started before the kill (`spawn_standby`,
        untimed; the manager's --failover-standby): the failover is takeover + start."""
        from nydus_hybrid.lifecycle import failover, upgrade

        self.seq += 1
        log_path = str(self.logs / f"{self.seq:03d}-standby.log")
        standby = failover.spawn_standby(self.argv, upgrade.next_apisock(self.apisock), log_path=log_path)
        self.procs.append(standby.process)
        time.sleep(SETTLE_S)  # its start-up is not part of the measurement
        pid = upgrade.daemon_pid(self.apisock)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        self.current.wait(10)
        t_dead, wall_reaped = time.monotonic(), time.time()
        r = failover.failover_to_standby(standby, self.sup)
        t_running, wall_running = time.monotonic(), time.time()
        self.apisock, self.current = r.apisock, r.process
        return self._finish(
            "standby-failover",
            t0,
            t_running,
            r,
            kill_to_reaped_ms=(t_dead - t0) * 1000,
            kill_to_running_ms=(t_running - t0) * 1000,
            log_path=log_path,
            wall_reaped=wall_reaped,
            wall_running=wall_running,
        )

    def measure(self, kind: str, rounds: int) -> List[Op]:
        do = {"upgrade": self.upgrade, "failover": self.failover, "standby-failover": self.standby_failover}[kind]
        ops = []
        for i in range(rounds):
            op = do()
            ops.append(op)
            self.log(
                f"  {kind} {i + 1}/{rounds}: probe stall {op.probe_stall_s * 1000:.1f} ms "
                f"(quiet {op.quiet_probe_s * 1000:.1f}), load {op.load_stall_s * 1000:.1f} ms "
                f"(quiet {op.quiet_load_s * 1000:.1f}), total {op.total_ms:.0f} ms"
                + (
                    f", gap {op.gap_ms:.1f} ms"
                    if kind == "upgrade"
                    else f", kill -> RUNNING {op.kill_to_running_ms:.0f} ms"
                )
            )
            if self.errors:
                raise AssertionError(f"{kind} {i + 1}: {len(self.errors)} failed reads, first: {self.errors[:5]}")
        return ops

    def close(self) -> None:
        """Stop the load, SIGTERM the last daemon (it unmounts), reap every successor."""
        from nydus_hybrid.lifecycle import upgrade

        try:
            if self.probe is not None:
                self.probe.stop()
            if self.load is not None:
                self.load.stop()
            if self.daemon is not None:
                try:
                    pid = upgrade.daemon_pid(self.apisock)
                    os.kill(pid, signal.SIGTERM)
                except (upgrade.UpgradeError, ProcessLookupError):
                    pass
                deadline = time.monotonic() + 15
                while self.dt.is_mounted(self.mnt) and time.monotonic() < deadline:
                    time.sleep(0.01)
        finally:
            reap(self.procs)
            self.sup.close()
            if self.daemon is not None:
                self.daemon.cleanup()  # also lazy-unmounts if anything is left


# --------------------------------------------------------------------------- summaries


def ms3(xs: Sequence[float]) -> Dict[str, float]:
    """p50 / p99 / max of values in ms (nearest rank: with 20 rounds p99 is the max)."""
    return {"p50": pct(xs, 0.5), "p99": pct(xs, 0.99), "max": max(xs)}


def figures(ops: Sequence[Op]) -> Dict[str, Dict[str, float]]:
    """figure name -> p50 / p99 / max in ms, for one kind of operation."""
    kind = ops[0].kind
    out = {
        "probe_stall": ms3([o.probe_stall_s * 1000 for o in ops]),
        "quiet_probe": ms3([o.quiet_probe_s * 1000 for o in ops]),
        "load_stall": ms3([o.load_stall_s * 1000 for o in ops]),
        "quiet_load": ms3([o.quiet_load_s * 1000 for o in ops]),
    }
    if kind == "upgrade":
        for name in ("gap_probe", "outside_gap_probe"):
            xs = [getattr(o, f"{name}_s") * 1000 for o in ops if getattr(o, f"{name}_s") is not None]
            if xs:
                out[name] = ms3(xs)
        out["gap"] = ms3([o.gap_ms for o in ops])
        xs = [o.workers_gap_ms for o in ops if o.workers_gap_ms is not None]
        if xs:
            out["workers_gap"] = ms3(xs)
    else:
        out["kill_to_reaped"] = ms3([o.kill_to_reaped_ms for o in ops])
        out["kill_to_running"] = ms3([o.kill_to_running_ms for o in ops])
        for name in ("startup", "api_to_running"):
            xs = [getattr(o, f"{name}_ms") for o in ops if getattr(o, f"{name}_ms") is not None]
            if xs:
                out[name] = ms3(xs)
    out["total"] = ms3([o.total_ms for o in ops])
    out["takeover"] = ms3([o.takeover_ms for o in ops])
    restores = [o.restore_ms for o in ops if o.restore_ms is not None]
    if restores:
        out["restore"] = ms3(restores)
    out["running_to_probe"] = ms3([o.running_to_probe_ms for o in ops])
    out["window"] = ms3([o.window_s * 1000 for o in ops])
    return out


# figure name -> row label (run_all.py's tables), in table order; a kind shows those it has
LABELS = {
    "probe_stall": "**stall**: longest probe read in progress during the operation",
    "quiet_probe": "quiet window of the same length: longest probe read",
    "gap_probe": "the stall split: longest probe overlapping `gap_ms` (placed by the successor's log, ±3 ms)",
    "outside_gap_probe": "the stall split: longest probe elsewhere in the upgrade",
    "load_stall": "load: longest read (or `ls -R`) in progress during the operation",
    "quiet_load": "quiet window: the load's longest read",
    "gap": "`gap_ms`: old daemon's `exit` asked -> new one's `start` answered (HTTP round trips included)",
    "workers_gap": "within it: old daemon's workers stopped -> new one's started (their logs' `state` events, 1 ms ts)",
    "kill_to_reaped": "SIGKILL -> the dead daemon reaped",
    "startup": "reaped -> the successor's API socket listens (its exec + imports; from its log)",
    "api_to_running": "API listens -> RUNNING seen (INIT poll, takeover, start; from its log)",
    "takeover": "PUT takeover -> READY (`takeover_ms`)",
    "restore": "the successor's restore within that (its `takeover` event's `ms`)",
    "total": "`total_ms` (upgrade: the whole hot_upgrade call, old daemon gone; failover: successor exec -> RUNNING)",
    "kill_to_running": "SIGKILL -> successor RUNNING",
    "running_to_probe": "RUNNING -> the first probe after it answered",
    "window": "window measured (operation start -> first probe after it answered)",
}


def goal_ms(kind: str) -> float:
    return UPGRADE_GOAL_MS if kind == "upgrade" else FAILOVER_GOAL_MS


# --------------------------------------------------------------------------- pytest

_missing = daemon_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture(scope="module")
def upgrade_bench(workdir):
    b = UpgradeBench(os.path.join(workdir, "upgrade"), log=print)
    try:
        yield b
    finally:
        b.close()
    assert not b.errors, b.errors[:5]
    assert not b.dt.is_mounted(b.mnt), "SIGTERM to the last daemon unmounts"


@pytest.mark.parametrize("kind", KINDS)
def test_upgrade_stall(benchmark, upgrade_bench, kind):
    """N operations of one kind under the read load (the upgrades first, then the failovers,
    on the same mount); the timed value is the whole run, the figures are in extra_info."""
    rounds = upgrade_rounds()
    what = {
        "upgrade": "hot upgrade",
        "failover": "kill -9 + failover",
        "standby-failover": "kill -9 + failover to a warm standby",
    }[kind]
    benchmark.group = f"upgrade: longest read stall per {what}, vs a quiet window of the same length"
    holder = {}
    benchmark.pedantic(
        lambda: holder.update(ops=upgrade_bench.measure(kind, rounds)), rounds=1, iterations=1, warmup_rounds=0
    )
    ops: List[Op] = holder["ops"]
    info = benchmark.extra_info
    info["rounds"] = rounds
    for name, v in figures(ops).items():
        for q, x in v.items():
            info[f"{name}_{q}_ms"] = round(x, 2)
    info["probe_stall_p50_over_quiet_p50"] = round(
        info["probe_stall_p50_ms"] / max(1e-3, info["quiet_probe_p50_ms"]), 1
    )
    info["load_stall_p50_over_quiet_p50"] = round(info["load_stall_p50_ms"] / max(1e-3, info["quiet_load_p50_ms"]), 2)
    info[f"goal_max_stall_under_{goal_ms(kind):.0f}ms_met"] = info["probe_stall_max_ms"] < goal_ms(kind)
    info["probes"] = len(upgrade_bench.probe)
    info["reads"] = len(upgrade_bench.load.reads)
    info["read_errors"] = len(upgrade_bench.errors)
    # correctness, not timing: not one failed or wrong read, the mount still there
    assert not upgrade_bench.errors, upgrade_bench.errors[:5]
    assert upgrade_bench.dt.is_mounted(upgrade_bench.mnt)
