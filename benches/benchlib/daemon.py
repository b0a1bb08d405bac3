"""Start-up of `python -m nydus_hybrid.daemon` (nydusd-compatible CLI, HTTP API on a unix
socket), started with the flags of the compat tests' helpers (tests/helpers/daemons.py):
exec -> API socket accepts -> GET /api/v1/daemon says RUNNING (`DaemonStart`,
`time_daemon`), against bare interpreter starts (`time_python`); where the import time
goes (`import_profile`)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from benchlib.corpus import fresh_dir
from benchlib.env import daemon_python
from benchlib.measure import proc_cpu_s, proc_disk_read_bytes, proc_runq_wait_s

DAEMON_STARTUP_GOAL_MS = 300
DEDICATED = "daemon: dedicated, bootstrap mounted (FUSE)"
SHARED = "daemon: shared, no bootstrap"

# (row name, `python -c` code): the floor, then what the daemon imports, biggest last.
STARTUP_BASELINES = (
    ("python -c pass (floor)", "pass"),
    ("python -c 'import nydus_hybrid._core'", "import nydus_hybrid._core"),
    ("python -c 'import http.server'", "import http.server"),
    ("python -c 'import nydus_hybrid.daemon.main'", "import nydus_hybrid.daemon.main"),
)
FLOOR = STARTUP_BASELINES[0][0]


def daemon_missing() -> Optional[str]:
    """Why the daemon benchmarks cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (the daemon mounts FUSE; drop_caches)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    try:
        import jsonschema  # noqa: F401  (tests.helpers.daemons)
        import yaml  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


@dataclass
class Startup:
    socket_s: Optional[float]  # exec -> connect() to the API socket succeeds (None: baselines)
    running_s: float  # exec -> GET /api/v1/daemon says RUNNING; baselines: exec -> the code ran
    cpu_s: Optional[float] = None  # daemon CPU (all threads) when RUNNING was seen
    stop_s: Optional[float] = None  # SIGTERM -> exit (unmounts)
    mounted: Optional[bool] = None  # the mountpoint was a mount when RUNNING was seen
    exit_s: Optional[float] = None  # baselines: exec -> exit (adds the interpreter's teardown)
    runq_wait_s: Optional[float] = None  # daemon: time its threads waited for a CPU (schedstat)
    disk_read_bytes: Optional[int] = None  # daemon: bytes it read from disk (/proc/PID/io)
    file_s: Optional[float] = None  # exec -> the probe file reads back whole through the mount


def time_python(code: str, *flags: str) -> Startup:
    """`python [flags] -c code` (the daemon's interpreter), spawned exactly like the daemon:
    exec -> the code has run (it then writes one byte to a pipe, the counterpart of the
    daemon answering RUNNING), and exec -> exit."""
    t0 = time.perf_counter()
    argv = [daemon_python(), *flags, "-c", code + "\nimport os; os.write(1, b'.')"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE)
    ready = p.stdout.read(1)
    t_ready = time.perf_counter()
    p.stdout.close()
    if p.wait() != 0 or ready != b".":
        raise RuntimeError(f"python -c {code!r}: exit {p.returncode}")
    return Startup(None, t_ready - t0, exit_s=time.perf_counter() - t0)


class DaemonStart:
    """One timed start of `python -m nydus_hybrid.daemon fuse` with the flags the compat
    tests (and nydus-snapshotter) use: dedicated with `image` (a tests.helpers.daemons.BuiltImage,
    localfs + blobcache v1 config, `--bootstrap`) or shared without. `start()` returns once
    RUNNING was seen, polling every `poll` s; `stop()` SIGTERMs it (it unmounts).

    `nydusd`: the real nydusd binary instead, with the same image, config and flags.
    `probe`: (path in the image, its bytes): `start()` first polls until that file reads
    back whole through the mount (`file_s`), then waits for RUNNING."""

    def __init__(
        self,
        workdir: str,
        image=None,
        poll: float = 0.001,
        nydusd: Optional[str] = None,
        probe: Optional[Tuple[str, bytes]] = None,
    ):
        from tests.helpers import daemons

        self.dt = daemons
        self.workdir = fresh_dir(workdir)
        self.mnt = os.path.join(self.workdir, "mnt")
        os.makedirs(self.mnt)
        self.sock = os.path.join(self.workdir, "api.sock")
        self.log = os.path.join(self.workdir, "daemon.log")
        self.poll = poll
        self.probe = probe
        argv = [nydusd, "fuse"] if nydusd else [daemon_python(), "-m", "nydus_hybrid.daemon", "fuse"]
        argv += ["--thread-num", "4"]
        if image is not None:
            cfg = os.path.join(self.workdir, "config.json")
            with open(cfg, "w") as f:
                json.dump(self.dt.v1_config("/", image.blobs, os.path.join(self.workdir, "cache")), f)
            argv += ["--config", cfg, "--bootstrap", str(image.boot)]
        self.argv = [
            *argv,
            "--mountpoint",
            self.mnt,
            "--apisock",
            self.sock,
            "--log-level",
            "info",
            "--failover-policy",
            "resend",
        ]
        if nydusd:
            self.argv += ["--rlimit-nofile", "0"]  # nydusd's default raise fails in this container
        self.proc: Optional[subprocess.Popen] = None
        self.result: Optional[Startup] = None

    def _log_text(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def start(self, timeout: float = 20.0) -> Startup:
        import socket

        logf = open(self.log, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        t_sock = None
        t_file = None
        conn = None
        try:
            if self.probe is not None:
                t_file = self._wait_probe(t0, timeout)
            while True:
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"daemon not RUNNING after {timeout} s: {self._log_text()}")
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self._log_text()}")
                if conn is None:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        s.connect(self.sock)
                    except (FileNotFoundError, ConnectionRefusedError):
                        s.close()
                        time.sleep(self.poll)
                        continue
                    t_sock = time.perf_counter()
                    s.settimeout(timeout)
                    conn = self.dt.UnixHTTPConnection(self.sock, timeout)
                    conn.sock = s
                conn.request("GET", "/api/v1/daemon", headers={"Accept": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200 and json.loads(body).get("state") == "RUNNING":
                    t_run = time.perf_counter()
                    break
                time.sleep(self.poll)
        except BaseException:
            self.stop()
            raise
        finally:
            if conn is not None:
                conn.close()
        pid = self.proc.pid
        self.result = Startup(
            t_sock - t0,
            t_run - t0,
            proc_cpu_s(pid),
            None,
            self.dt.is_mounted(self.mnt),
            runq_wait_s=proc_runq_wait_s(pid),
            disk_read_bytes=proc_disk_read_bytes(pid),
            file_s=None if t_file is None else t_file - t0,
        )
        return self.result

    def _wait_probe(self, t0: float, timeout: float) -> float:
        """Poll the probe file through the mountpoint until it reads back whole."""
        assert self.probe is not None and self.proc is not None
        path = os.path.join(self.mnt, self.probe[0])
        want = self.probe[1]
        while True:
            try:
                with open(path, "rb") as f:
                    if f.read() == want:
                        return time.perf_counter()
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{path} not readable after {timeout} s: {self._log_text()}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self._log_text()}")
            time.sleep(self.poll)

    def stop(self) -> Optional[float]:
        """SIGTERM -> exit seconds (None if it was not running); always leaves nothing mounted."""
        if self.proc is None:
            return None
        took = None
        try:
            if self.proc.poll() is None:
                t = time.perf_counter()
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                    took = time.perf_counter() - t
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(15)
        finally:
            self.dt.lazy_umount(self.mnt)
            self.proc = None
        if self.result is not None:
            self.result.stop_s = took
        return took


def time_daemon(workdir: str, image=None) -> Startup:
    """Start a daemon, time it to RUNNING, stop it (timed too)."""
    d = DaemonStart(workdir, image)
    try:
        d.start()
    finally:
        d.stop()
    return d.result


def daemon_image(workdir: str):
    """The compat tests' small image (tests.helpers.daemons.BuiltImage: 3 files, 2.5 MB)."""
    from pathlib import Path

    from tests.helpers import daemons

    return daemons.BuiltImage(Path(fresh_dir(workdir)), tag="bench")


def startup_rows(image) -> List[Tuple[str, Callable[[str], Startup]]]:
    """(row name, fn(workdir) -> Startup), the floor first."""
    rows: List[Tuple[str, Callable[[str], Startup]]] = [
        (name, lambda w, code=code: time_python(code)) for name, code in STARTUP_BASELINES
    ]
    rows.append((DEDICATED, lambda w: time_daemon(w, image)))
    rows.append((SHARED, lambda w: time_daemon(w, None)))
    return rows


def import_profile(module: str, runs: int = 5) -> Tuple[Dict[str, Tuple[float, float]], Dict[str, int], List[str]]:
    """`python -X importtime -c 'import module'`, `runs` times: per imported module the
    median (self ms, cumulative ms), its depth, and the names in the order printed."""
    samples: Dict[str, List[Tuple[int, int]]] = {}
    depth: Dict[str, int] = {}
    order: List[str] = []
    for _ in range(runs):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True, check=True
        ).stderr
        for line in err.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cum_us, name = line[len("import time:") :].split("|", 2)
            self_us, cum_us = int(self_us), int(cum_us)
            key = name.strip()
            if key not in depth:
                depth[key] = (len(name) - len(name.lstrip()) - 1) // 2
                order.append(key)
            samples.setdefault(key, []).append((self_us, cum_us))
    med = {
        k: (statistics.median(s for s, _ in v) / 1000, statistics.median(c for _, c in v) / 1000)
        for k, v in samples.items()
    }
    return med, depth, order


def import_children(module: str, med, depth, order) -> List[Tuple[str, float]]:
    """The direct imports of `module` (as importtime attributes them) with their
    cumulative ms, biggest first."""
    at = order.index(module)
    d = depth[module]
    kids = []
    for name in reversed(order[:at]):
        if depth[name] <= d:
            break
        if depth[name] == d + 1:
            kids.append((name, med[name][1]))
    return sorted(kids, key=lambda x: -x[1])
