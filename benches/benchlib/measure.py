"""Measuring child processes: `run_measured` runs a command (or a pipeline) and returns its
wall time, CPU time and peak RSS (from GNU time or a small fork+wait4 wrapper), optionally
sampling VmRSS while it runs (`rss_quartiles`); `/proc` readings of live processes (CPU,
run-queue wait, disk reads); `reap` for children told to stop."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple


@dataclass
class Run:
    wall: float
    maxrss_kib: int  # max over the processes of the command (pipeline)
    cpu: float  # user + system seconds over all its processes
    stdout: bytes = b""
    sys_cpu: float = 0.0  # the system (kernel) part of cpu
    rss_timeline: List[Tuple[float, int]] = field(default_factory=list)  # (s, VmRSS KiB)

    @property
    def maxrss_mib(self) -> float:
        return self.maxrss_kib / 1024


def _vmrss_kib(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _child_pid(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except (OSError, ValueError):
        return None


# Why a wrapper: ru_maxrss of a child is NOT its own peak when the parent is a big process.
# CPython starts children with vfork(); at exec the kernel folds the *parent's* RSS
# high-water mark into the child's maxrss, so `os.wait4` from this (50-300 MiB) Python
# reports at least that for `true`. GNU time (or the tiny fallback below) forks from a
# small process and reports its child's rusage, which is the real peak.
GNU_TIME = "/usr/bin/time"


_FALLBACK_WRAPPER = (
    "import os,sys\n"
    "pid=os.fork()\n"
    "if pid==0:\n"
    "    os.execvp(sys.argv[2],sys.argv[2:])\n"
    "_,st,ru=os.wait4(pid,0)\n"
    "open(sys.argv[1],'w').write('%d %f %f\\n'%(ru.ru_maxrss,ru.ru_utime,ru.ru_stime))\n"
    "sys.exit(os.waitstatus_to_exitcode(st))\n"
)


def _wrap(argv: Sequence[str], report: str) -> List[str]:
    if os.access(GNU_TIME, os.X_OK):
        return [GNU_TIME, "-f", "%M %U %S", "-o", report, *argv]
    return [sys.executable, "-S", "-E", "-c", _FALLBACK_WRAPPER, report, *argv]


def rss_method() -> str:
    return "GNU time %M" if os.access(GNU_TIME, os.X_OK) else "fork+wait4 from a small Python wrapper"


def run_measured(pipeline: Sequence[Sequence[str]], *, sample_rss: bool = False, env: Optional[dict] = None) -> Run:
    """Run a command (or a pipeline of commands joined by pipes) and return wall time,
    total CPU time and peak RSS (max over the pipeline's processes). Raises on failure."""
    out = tempfile.TemporaryFile()
    errs = [tempfile.TemporaryFile() for _ in pipeline]
    reports = []
    for _ in pipeline:
        fd, path = tempfile.mkstemp(prefix="nydus-bench-rusage-")
        os.close(fd)
        reports.append(path)
    procs: List[subprocess.Popen] = []
    t0 = time.perf_counter()
    prev_stdout = subprocess.DEVNULL
    for i, argv in enumerate(pipeline):
        last = i == len(pipeline) - 1
        p = subprocess.Popen(
            _wrap(argv, reports[i]), stdin=prev_stdout, stdout=out if last else subprocess.PIPE, stderr=errs[i], env=env
        )
        if i > 0:
            prev_stdout.close()
        prev_stdout = p.stdout
        procs.append(p)

    timeline: List[Tuple[float, int]] = []
    done = threading.Event()
    sampler = None
    if sample_rss:
        wrapper = procs[-1].pid

        def sample() -> None:
            pid = None
            while not done.is_set():
                pid = pid or _child_pid(wrapper)
                v = _vmrss_kib(pid) if pid else None
                if v is not None:
                    timeline.append((time.perf_counter() - t0, v))
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

    for p in procs:
        p.wait()
    wall = time.perf_counter() - t0
    done.set()
    if sampler:
        sampler.join()

    maxrss = 0
    cpu = 0.0
    sys_cpu = 0.0
    failures = []
    for i, p in enumerate(procs):
        with open(reports[i]) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        os.unlink(reports[i])
        if p.returncode != 0 or not lines:
            errs[i].seek(0)
            failures.append(
                f"{' '.join(pipeline[i])}: exit {p.returncode}: {errs[i].read()[-2000:].decode(errors='replace')}"
            )
            continue
        kib, user, system = lines[-1].split()
        maxrss = max(maxrss, int(kib))
        cpu += float(user) + float(system)
        sys_cpu += float(system)
    out.seek(0)
    stdout = out.read()
    out.close()
    for e in errs:
        e.close()
    if failures:
        raise RuntimeError("; ".join(failures))
    return Run(wall, maxrss, cpu, stdout, sys_cpu, timeline)


def rss_quartiles(run: Run) -> List[float]:
    """VmRSS (MiB) sampled nearest 25/50/75/100% of the run's wall time: flat = bounded."""
    tl = run.rss_timeline
    if not tl:
        return []
    out = []
    for q in (0.25, 0.5, 0.75, 1.0):
        t = q * tl[-1][0]
        out.append(round(min(tl, key=lambda p: abs(p[0] - t))[1] / 1024, 1))
    return out


def proc_cpu_s(pid: int) -> Optional[float]:
    """user + sys CPU seconds of a live process, all threads (10 ms resolution)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_runq_wait_s(pid: int) -> Optional[float]:
    """Seconds the threads of a live process spent runnable but waiting for a CPU
    (/proc/PID/task/*/schedstat, field 2): CPU contention, as opposed to sleeping or I/O."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return total / 1e9


def proc_disk_read_bytes(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def reap(procs) -> None:
    """Wait for child processes that were told to stop; kill one that hangs."""
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
