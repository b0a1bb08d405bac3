"""API latency of the daemon under FUSE read load, against the idle mount and a bare
aiohttp control server: `DaemonLoad` (a dedicated daemon with the tree mounted, reader
processes, API clients) and the interleaved rounds of `api_latency_rounds`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from benchlib.corpus import Corpus, fresh_dir
from benchlib.measure import proc_cpu_s, reap
from benchlib.pagecache import warm_page_cache
from benchlib.report import MiB, pct

API_CONCURRENCY = 100  # GET /api/v1/metrics in flight at once, one connection each
API_SEQUENTIAL = 25  # then this many one after another on one keep-alive connection
API_READERS = 4

READER_SCRIPT = r"""
import mmap, os, struct, sys, time
ctl, slot, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
f = open(ctl, "r+b")
m = mmap.mmap(f.fileno(), 4096)
buf = bytearray(1 << 20)
total, i = 0, slot * len(paths) // 4
while m[0] != 2:
    if m[0] == 1:
        time.sleep(0.001)
        continue
    fd = os.open(paths[i % len(paths)], os.O_RDONLY)
    i += 1
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while m[0] == 0:
            n = os.readv(fd, [buf])
            if not n:
                break
            total += n
            struct.pack_into("<Q", m, 8 * (slot + 1), total)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
"""


CONTROL_SERVER_SCRIPT = r"""
import sys
from aiohttp import web
body = open(sys.argv[2], "rb").read()
async def metrics(request):
    return web.Response(body=body, content_type="application/json", headers={"Server": "Nydus API"})
app = web.Application()
app.router.add_get("/api/v1/metrics", metrics)
web.run_app(app, path=sys.argv[1], print=None, keepalive_timeout=10.0 ** 9, handle_signals=True)
"""


CONTROL = "control: bare aiohttp server, same reply"
DAEMON = "daemon"


class DaemonLoad:
    """A dedicated daemon (tests.helpers.daemons.Daemon: `--thread-num 4`, localfs + blobcache v1
    config) with the tree mounted, API_READERS reader processes reading its files through
    the FUSE mount in a loop (1 MiB `readv`s; each file's page cache dropped with
    posix_fadvise DONTNEED before and after, so every read reaches the daemon), and an
    aiohttp client (UnixConnector, up to API_CONCURRENCY connections) on its API socket.

    Also a control: a bare aiohttp server in its own process on another unix socket,
    answering GET /api/v1/metrics with the bytes the daemon answered (no FUSE, no state),
    so a loaded / idle ratio can be told apart from what the load does to any small
    Python server on this machine.

    The readers start paused; `readers(True/False)` runs / pauses them (a byte in a shared
    mmap, checked before every 1 MiB read). `read_bytes()` is their running total."""

    def __init__(self, tree: Corpus, workdir: str, log: Callable[[str], None] = lambda s: None):
        import asyncio
        import mmap
        from pathlib import Path

        import aiohttp

        import nydus_hybrid
        from tests.helpers import daemons

        self.dt = daemons
        self.tree = tree
        self.workdir = fresh_dir(workdir)
        img = os.path.join(self.workdir, "image")
        self.boot, self.blobs = os.path.join(img, "image.boot"), os.path.join(img, "blobs")
        nydus_hybrid.build(tree.root, self.boot, self.blobs, compressor="zstd", progress=False)
        warm_page_cache(self.blobs, extra=[self.boot])
        self.daemon = None
        self.control = None
        self.procs: List[subprocess.Popen] = []
        self.ctl = None
        self.loop = asyncio.new_event_loop()
        self.sessions: Dict[str, object] = {}
        try:
            run = Path(self.workdir) / "daemon"
            run.mkdir()
            self.daemon = self.dt.Daemon(
                run, config=self.dt.v1_config("/", self.blobs, run / "cache"), bootstrap=self.boot
            )
            self.mnt = str(self.daemon.mnt)

            reply = os.path.join(self.workdir, "metrics.json")
            c = self.daemon.client()
            try:
                with open(reply, "wb") as f:
                    f.write(c.get("/api/v1/metrics").raw)
            finally:
                c.close()
            self.control_sock = os.path.join(self.workdir, "control.sock")
            self.control = subprocess.Popen([sys.executable, "-c", CONTROL_SERVER_SCRIPT, self.control_sock, reply])

            self.ctl_path = os.path.join(self.workdir, "readers.ctl")
            with open(self.ctl_path, "wb") as f:
                f.write(b"\1" + bytes(4095))
            self._ctlf = open(self.ctl_path, "r+b")
            self.ctl = mmap.mmap(self._ctlf.fileno(), 4096)
            paths = [os.path.join(self.mnt, rel) for rel, _ in tree.files]
            for k in range(API_READERS):
                self.procs.append(
                    subprocess.Popen([sys.executable, "-c", READER_SCRIPT, self.ctl_path, str(k), *paths])
                )

            deadline = time.monotonic() + 20
            while not os.path.exists(self.control_sock):
                if self.control.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the control server did not start")
                time.sleep(0.01)

            async def mk(sock):
                return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock, limit=API_CONCURRENCY))

            self.sessions[DAEMON] = self.loop.run_until_complete(mk(self.daemon.sock))
            self.sessions[CONTROL] = self.loop.run_until_complete(mk(self.control_sock))
            log(f"daemon: {tree.mib:.0f} MiB mounted at {self.mnt}, {API_READERS} readers (paused), control server up")
        except BaseException:
            self.close()
            raise

    # -- readers

    def readers(self, run: bool) -> None:
        self.ctl[0] = 0 if run else 1
        if not run:
            time.sleep(0.05)  # in-flight 1 MiB reads finish

    def read_bytes(self) -> int:
        import struct

        self.check()
        return sum(struct.unpack_from("<Q", self.ctl, 8 * (k + 1))[0] for k in range(API_READERS))

    def check(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"a reader exited with {p.returncode}")
        if not self.daemon.alive():
            raise RuntimeError(f"daemon died: {self.daemon.log_text()}")

    def daemon_cpu_s(self) -> Optional[float]:
        return proc_cpu_s(self.daemon.proc.pid)

    def data_read(self) -> int:
        """The daemon's own count of bytes read through FUSE (GET /api/v1/metrics)."""
        c = self.daemon.client()
        try:
            return c.get("/api/v1/metrics").body["data_read"]
        finally:
            c.close()

    # -- API requests

    async def _one(self, session) -> float:
        t = time.perf_counter_ns()
        async with session.get("http://unix/api/v1/metrics") as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"GET /api/v1/metrics: {r.status} {body[:200]!r}")
        return (time.perf_counter_ns() - t) / 1000

    async def _burst(self, session, n: int) -> List[float]:
        import asyncio

        return list(await asyncio.gather(*(self._one(session) for _ in range(n))))

    async def _sequential(self, session, n: int) -> List[float]:
        return [await self._one(session) for _ in range(n)]

    def burst(self, target: str = DAEMON, n: int = API_CONCURRENCY) -> List[float]:
        """`n` GET /api/v1/metrics at once (one connection each); µs per request."""
        return self.loop.run_until_complete(self._burst(self.sessions[target], n))

    def sequential(self, target: str = DAEMON, n: int = API_SEQUENTIAL) -> List[float]:
        """`n` GET /api/v1/metrics one after another; µs per request."""
        return self.loop.run_until_complete(self._sequential(self.sessions[target], n))

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl[0] = 2
        reap(self.procs)
        self.procs = []
        for sess in self.sessions.values():
            self.loop.run_until_complete(sess.close())
        self.sessions = {}
        if not self.loop.is_closed():
            self.loop.close()
        if self.control is not None:
            self.control.terminate()
            try:
                self.control.wait(10)
            except subprocess.TimeoutExpired:
                self.control.kill()
                self.control.wait(10)
            self.control = None
        if self.daemon is not None:
            self.daemon.cleanup()
            self.daemon = None
        if self.ctl is not None:
            self.ctl.close()
            self._ctlf.close()
            self.ctl = None


API_TARGETS = (DAEMON, CONTROL)
API_STATES = ("idle", "loaded")


@dataclass
class ApiLatency:
    """Per (target, state): µs of every concurrent request (one list per burst), of every
    sequential one, and the wall seconds of each burst. Reader bytes and seconds while the
    loaded requests ran, and in windows with no requests; daemon CPU seconds over the idle
    requests to it (and to the control); the daemon's data_read and the readers' bytes over the whole run."""

    burst: Dict[Tuple[str, str], List[List[float]]] = field(default_factory=dict)
    seq: Dict[Tuple[str, str], List[float]] = field(default_factory=dict)
    burst_wall: Dict[Tuple[str, str], List[float]] = field(default_factory=dict)
    read_during: List[Tuple[int, float]] = field(default_factory=list)
    read_alone: List[Tuple[int, float]] = field(default_factory=list)
    idle_cpu: List[float] = field(default_factory=list)
    control_idle_cpu: List[float] = field(default_factory=list)
    idle_requests: int = 0
    data_read: int = 0
    reader_bytes: int = 0

    def concurrent(self, target: str, state: str) -> List[float]:
        return [x for b in self.burst.get((target, state), []) for x in b]

    @staticmethod
    def rate(pairs: Sequence[Tuple[int, float]]) -> float:
        return sum(b for b, _ in pairs) / MiB / max(1e-9, sum(s for _, s in pairs))


def api_latency_rounds(
    load: DaemonLoad, rounds: int, alone_s: float = 0.25, log: Callable[[str], None] = lambda s: None
) -> ApiLatency:
    """Interleaved rounds. Each: with the readers paused, a burst of API_CONCURRENCY
    concurrent requests then API_SEQUENTIAL sequential ones, to the daemon and then to the
    control server; the readers run alone for `alone_s` (their throughput without
    requests); then the same requests with the readers running. Before the rounds: one
    untimed pass of everything, and the readers read the whole tree twice (the blob cache
    is filled: steady state of a daemon serving a hot image)."""
    res = ApiLatency()

    def requests(state: str) -> None:
        for target in API_TARGETS:
            t = time.perf_counter()
            res.burst.setdefault((target, state), []).append(load.burst(target))
            res.burst_wall.setdefault((target, state), []).append(time.perf_counter() - t)
            res.seq.setdefault((target, state), []).extend(load.sequential(target))

    load.readers(False)
    for target in API_TARGETS:
        load.burst(target)
        load.sequential(target)
    load.readers(True)
    deadline, b0 = time.monotonic() + 20, load.read_bytes()
    while load.read_bytes() - b0 < 2 * load.tree.total_bytes and time.monotonic() < deadline:
        time.sleep(0.05)
    for target in API_TARGETS:
        load.burst(target)
    dr0, rb0 = load.data_read(), load.read_bytes()
    for r in range(rounds):
        load.readers(False)
        c0 = load.daemon_cpu_s()
        t = time.perf_counter()
        res.burst.setdefault((DAEMON, "idle"), []).append(load.burst(DAEMON))
        res.burst_wall.setdefault((DAEMON, "idle"), []).append(time.perf_counter() - t)
        res.seq.setdefault((DAEMON, "idle"), []).extend(load.sequential(DAEMON))
        c1 = load.daemon_cpu_s()
        if c0 is not None and c1 is not None:
            res.idle_cpu.append(c1 - c0)
            res.idle_requests += API_CONCURRENCY + API_SEQUENTIAL
        c0 = proc_cpu_s(load.control.pid)
        t = time.perf_counter()
        res.burst.setdefault((CONTROL, "idle"), []).append(load.burst(CONTROL))
        res.burst_wall.setdefault((CONTROL, "idle"), []).append(time.perf_counter() - t)
        res.seq.setdefault((CONTROL, "idle"), []).extend(load.sequential(CONTROL))
        c1 = proc_cpu_s(load.control.pid)
        if c0 is not None and c1 is not None:
            res.control_idle_cpu.append(c1 - c0)
        load.readers(True)
        t_a, b_a = time.perf_counter(), load.read_bytes()
        time.sleep(alone_s)
        t_b, b_b = time.perf_counter(), load.read_bytes()
        res.read_alone.append((b_b - b_a, t_b - t_a))
        requests("loaded")
        t_c, b_c = time.perf_counter(), load.read_bytes()
        res.read_during.append((b_c - b_b, t_c - t_b))
        p50 = {k: pct(v[-1], 0.5) / 1000 for k, v in res.burst.items()}
        log(
            f"  round {r + 1}/{rounds}: daemon burst p50 idle {p50[(DAEMON, 'idle')]:5.1f} ms, "
            f"loaded {p50[(DAEMON, 'loaded')]:5.1f} ms (control "
            f"{p50[(CONTROL, 'idle')]:5.1f} / {p50[(CONTROL, 'loaded')]:5.1f}); "
            f"readers {(b_c - b_b) / MiB / (t_c - t_b):6.0f} MiB/s (alone {(b_b - b_a) / MiB / (t_b - t_a):6.0f})"
        )
    load.readers(False)
    res.data_read, res.reader_bytes = load.data_read() - dr0, load.read_bytes() - rb0
    return res
