"""Shared machinery for the nydus-hybrid benchmarks (used by conftest.py and run_all.py).

* a deterministic benchmark corpus (text-like, incompressible, duplicate and many small
  files) and a large sparse-ish file for the bounded-RSS check, cached between runs;
* running build tools as child processes and reading their wall time, CPU time and peak
  RSS from ``os.wait4`` (ru_maxrss), optionally sampling VmRSS while they run;
* the reader workloads (sequential 1 MiB blocks and 4 KiB random reads).

Sizes: NYDUS_BENCH_MB (corpus, MiB), NYDUS_BENCH_BIGFILE_GB (big file, GiB),
NYDUS_BENCH_ROUNDS (timed rounds per tool), NYDUS_BENCH_DIR (where the cached inputs
live). Defaults are smaller when the CI environment variable is set.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

MiB = 1 << 20
GiB = 1 << 30
CORPUS_VERSION = 1
BIGFILE_VERSION = 1
IN_CI = bool(os.environ.get("CI"))


# --------------------------------------------------------------------------- settings


def bench_mb() -> int:
    return int(os.environ.get("NYDUS_BENCH_MB", "64" if IN_CI else "200"))


def bigfile_gb() -> float:
    return float(os.environ.get("NYDUS_BENCH_BIGFILE_GB", "0.5" if IN_CI else "2"))


def bench_rounds() -> int:
    return max(1, int(os.environ.get("NYDUS_BENCH_ROUNDS", "3")))


def bench_dir() -> str:
    d = os.environ.get("NYDUS_BENCH_DIR") or os.path.join(tempfile.gettempdir(), "nydus-bench")
    os.makedirs(d, exist_ok=True)
    return d


RSS_GOAL_MIB = 100


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    root: str
    files: List[Tuple[str, int]]  # (relative path, size) of every regular file
    total_bytes: int

    @property
    def mib(self) -> float:
        return self.total_bytes / MiB


def _text_pool(rng: random.Random, size: int) -> bytes:
    """Log/prose-like text: Zipf-weighted pseudo-words, numbers, punctuation, lines."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    letter_w = [
        12.7,
        9.1,
        8.2,
        7.5,
        7.0,
        6.7,
        6.3,
        6.1,
        6.0,
        4.3,
        4.0,
        2.8,
        2.8,
        2.4,
        2.4,
        2.2,
        2.0,
        2.0,
        1.9,
        1.5,
        1.0,
        0.8,
        0.2,
        0.2,
        0.1,
        0.1,
    ]
    vocab = []
    for _ in range(12000):
        n = min(14, max(1, int(rng.expovariate(1 / 5.0)) + 1))
        vocab.append("".join(rng.choices(letters, letter_w, k=n)))
    weights = [1.0 / (i + 1) ** 1.05 for i in range(len(vocab))]
    parts: List[str] = []
    have = 0
    while have < size:
        words = rng.choices(vocab, weights, k=4096)
        line_len = 0
        out = []
        for i, w in enumerate(words):
            if i % 97 == 13:
                w = str(rng.randrange(10 ** rng.randint(1, 9)))
            elif i % 61 == 7:
                w = w.capitalize() + rng.choice(",.:;")
            out.append(w)
            line_len += len(w) + 1
            if line_len > 60 + (i % 23):
                out.append("\n")
                line_len = 0
            else:
                out.append(" ")
        chunk = "".join(out)
        parts.append(chunk)
        have += len(chunk)
    return "".join(parts).encode()[:size]


def _text_bytes(rng: random.Random, pool: bytes, size: int) -> bytes:
    """`size` bytes of text stitched from random slices of the pool."""
    out = bytearray()
    while len(out) < size:
        n = min(size - len(out), rng.randint(4096, 96 * 1024))
        at = rng.randrange(0, len(pool) - n)
        out += pool[at : at + n]
    return bytes(out)


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _write(path: str, data: bytes, mtime: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))


def generate_corpus(root: str, mb: int, seed: int = 0x6E796475) -> None:
    """Write the deterministic corpus: by bytes ~45% text-like, ~30% incompressible random,
    ~10% exact duplicates of earlier files, ~15% small files (256 B - 16 KiB), plus a few
    symlinks and empty files."""
    rng = random.Random(seed + mb)
    total = mb * MiB
    mtime = 1_700_000_000
    pool = _text_pool(rng, 16 * MiB)
    made: List[Tuple[str, int]] = []

    budget = int(total * 0.45)
    i = 0
    while budget > 0:
        size = min(budget, _log_uniform(rng, 16 * 1024, 4 * MiB))
        rel = f"text/d{i % 17:02d}/doc{i:05d}.txt"
        _write(os.path.join(root, rel), _text_bytes(rng, pool, size), mtime)
        made.append((rel, size))
        budget -= size
        i += 1

    budget = int(total * 0.30)
    i = 0
    while budget > 0:
        size = min(budget, _log_uniform(rng, 64 * 1024, 8 * MiB))
        rel = f"bin/d{i % 11:02d}/blob{i:05d}.bin"
        _write(os.path.join(root, rel), rng.randbytes(size), mtime)
        made.append((rel, size))
        budget -= size
        i += 1

    budget = int(total * 0.15)
    i = 0
    while budget > 0:
        size = min(budget, _log_uniform(rng, 256, 16 * 1024))
        kind = "txt" if rng.random() < 0.6 else "dat"
        data = _text_bytes(rng, pool, size) if kind == "txt" else rng.randbytes(size)
        rel = f"small/p{i // 2500:02d}/q{(i // 50) % 50:02d}/f{i:06d}.{kind}"
        _write(os.path.join(root, rel), data, mtime)
        made.append((rel, size))
        budget -= size
        i += 1

    budget = int(total * 0.10)
    i = 0
    candidates = list(made)
    while budget > 0 and candidates:
        rel, size = rng.choice(candidates)
        if size > budget:
            candidates = [c for c in candidates if c[1] <= budget]
            continue
        dst = os.path.join(root, f"dup/d{i % 7:02d}/copy{i:05d}_" + os.path.basename(rel))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(root, rel), dst)
        os.utime(dst, (mtime, mtime))
        budget -= size
        i += 1

    os.makedirs(os.path.join(root, "misc"), exist_ok=True)
    for j in range(20):
        _write(os.path.join(root, f"misc/empty{j:02d}"), b"", mtime)
    for j, (rel, _) in enumerate(made[:: max(1, len(made) // 20)][:20]):
        os.symlink(os.path.join("..", rel), os.path.join(root, f"misc/link{j:02d}"))


def scan_files(root: str) -> List[Tuple[str, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append((os.path.relpath(p, root), st.st_size))
    return out


def ensure_corpus(mb: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> Corpus:
    mb = bench_mb() if mb is None else mb
    root = os.path.join(bench_dir(), f"corpus-{mb}mb-v{CORPUS_VERSION}")
    marker = root + ".done"
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        log(f"generating {mb} MiB corpus in {root} ...")
        t = time.perf_counter()
        generate_corpus(root, mb)
        log(f"  done in {time.perf_counter() - t:.1f} s")
        with open(marker, "w") as f:
            json.dump({"mb": mb, "version": CORPUS_VERSION}, f)
    files = scan_files(root)
    return Corpus(root, files, sum(s for _, s in files))


def ensure_bigfile(gb: Optional[float] = None, log: Callable[[str], None] = lambda s: None) -> Corpus:
    """A directory holding one large file: per MiB, 5/8 incompressible (distinct chunks),
    1/8 text-like, 2/8 holes (read back as zeros, which dedup to one chunk)."""
    gb = bigfile_gb() if gb is None else gb
    size = int(gb * GiB) // MiB * MiB
    root = os.path.join(bench_dir(), f"bigfile-{size // MiB}mib-v{BIGFILE_VERSION}")
    path = os.path.join(root, "big.img")
    marker = root + ".done"
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        log(f"generating {size / GiB:.2f} GiB sparse-ish file in {root} ...")
        t = time.perf_counter()
        rng = random.Random(0xB16F11E)
        noise = rng.randbytes(16 * MiB + MiB)
        text = _text_pool(rng, 4 * MiB)
        with open(path, "wb") as f:
            for i in range(size // MiB):
                kind = i % 8
                if kind in (2, 6):
                    continue  # hole
                f.seek(i * MiB)
                if kind == 4:
                    at = rng.randrange(0, len(text) - MiB)
                    f.write(text[at : at + MiB])
                else:
                    at = rng.randrange(0, 16 * MiB) & ~7
                    f.write(noise[at : at + MiB])
            f.truncate(size)
        log(f"  done in {time.perf_counter() - t:.1f} s")
        with open(marker, "w") as f:
            json.dump({"bytes": size, "version": BIGFILE_VERSION}, f)
    return Corpus(root, [("big.img", size)], size)


def warm_page_cache(root: str, extra: Sequence[str] = ()) -> None:
    """Read every regular file under `root` (and each path in `extra`) once."""
    paths = [os.path.join(root, rel) for rel, _ in scan_files(root)] + list(extra)
    buf = bytearray(MiB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


# --------------------------------------------------------------------------- processes


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


# --------------------------------------------------------------------------- build tools


@dataclass
class Tool:
    name: str
    make: Callable[[str, str], List[List[str]]]  # (source dir, fresh output dir) -> pipeline
    ours: bool = False
    env: Optional[Dict[str, str]] = None


def nydus_cmd(src: str, out: str, compressor: str = "zstd", digester: str = "blake3") -> List[List[str]]:
    return [
        [
            sys.executable,
            "-m",
            "nydus_hybrid",
            "build",
            src,
            "-B",
            os.path.join(out, "image.boot"),
            "-D",
            os.path.join(out, "blobs"),
            "-c",
            compressor,
            "-d",
            digester,
            "--no-progress",
        ]
    ]


def erofs_cmd(src: str, out: str) -> List[List[str]]:
    return [["mkfs.erofs", "-zlz4", "--quiet", os.path.join(out, "out.img"), src]]


def tar_zstd_cmd(src: str, out: str) -> List[List[str]]:
    return [["tar", "-C", src, "-cf", "-", "."], ["zstd", "-T0", "-3", "-q", "-o", os.path.join(out, "out.tar.zst")]]


TOOLS: Dict[str, Tool] = {
    "nydus-hybrid zstd": Tool("nydus-hybrid zstd", lambda s, o: nydus_cmd(s, o, "zstd"), ours=True),
    "nydus-hybrid lz4_block": Tool("nydus-hybrid lz4_block", lambda s, o: nydus_cmd(s, o, "lz4_block"), ours=True),
    "mkfs.erofs -zlz4": Tool("mkfs.erofs -zlz4", erofs_cmd),
    "tar | zstd -T0 -3": Tool("tar | zstd -T0 -3", tar_zstd_cmd),
}
BASELINE = "mkfs.erofs -zlz4"


def dir_bytes(path: str) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for n in filenames:
            total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def run_tool(tool: Tool, src: str, out: str, *, sample_rss: bool = False) -> Tuple[Run, int]:
    """Run one build into a fresh `out`; returns the measurement and the output size."""
    fresh_dir(out)
    env = None
    if tool.env:
        env = dict(os.environ, **tool.env)
    r = run_measured(tool.make(src, out), sample_rss=sample_rss, env=env)
    return r, dir_bytes(out)


def python_baseline_rss_kib() -> int:
    """Peak RSS of a bare `python -c 'import nydus_hybrid'` (the floor for our CLI builds)."""
    return run_measured([[sys.executable, "-c", "import nydus_hybrid, nydus_hybrid.cli"]]).maxrss_kib


@dataclass
class Summary:
    name: str
    input_bytes: int
    walls: List[float]
    rss_kib: List[int]
    cpus: List[float]
    output_bytes: int
    sys_cpus: List[float] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def mib_s(self) -> float:
        return self.input_bytes / MiB / self.wall

    @property
    def peak_rss_mib(self) -> float:
        return max(self.rss_kib) / 1024

    @property
    def cores_used(self) -> float:
        return statistics.median(c / w for c, w in zip(self.cpus, self.walls))

    @property
    def sys_share(self) -> float:
        """Median fraction of the CPU time spent in the kernel."""
        return statistics.median(s / c if c else 0.0 for s, c in zip(self.sys_cpus, self.cpus))

    @property
    def out_ratio(self) -> float:
        return self.output_bytes / self.input_bytes if self.input_bytes else 0.0


def summarize(name: str, input_bytes: int, runs: Sequence[Tuple[Run, int]]) -> Summary:
    return Summary(
        name,
        input_bytes,
        [r.wall for r, _ in runs],
        [r.maxrss_kib for r, _ in runs],
        [r.cpu for r, _ in runs],
        runs[-1][1],
        [r.sys_cpu for r, _ in runs],
    )


# --------------------------------------------------------------------------- readers


def read_image_sequential(img, files: Sequence[Tuple[str, int]], block: int = MiB) -> int:
    n = 0
    for rel, size in files:
        p = "/" + rel
        for off in range(0, size, block):
            n += len(img.read(p, off, block))
    return n


def read_source_sequential(root: str, files: Sequence[Tuple[str, int]], block: int = MiB) -> int:
    n = 0
    for rel, _ in files:
        with open(os.path.join(root, rel), "rb") as f:
            while True:
                b = f.read(block)
                if not b:
                    break
                n += len(b)
    return n


def random_reads(
    files: Sequence[Tuple[str, int]], count: int, block: int = 4096, seed: int = 4096
) -> List[Tuple[str, int]]:
    """`count` (path, 4K-aligned offset) pairs, files picked with probability ~ size."""
    rng = random.Random(seed)
    big = [(rel, size) for rel, size in files if size > 0]
    picks = rng.choices(big, weights=[s for _, s in big], k=count)
    return [(rel, rng.randrange(0, max(1, size - block + 1)) // block * block) for rel, size in picks]


def read_image_random(img, pairs: Sequence[Tuple[str, int]], block: int = 4096) -> int:
    n = 0
    for rel, off in pairs:
        n += len(img.read("/" + rel, off, block))
    return n


class SourceFds:
    """Source files opened once, for os.pread."""

    def __init__(self, root: str, pairs: Sequence[Tuple[str, int]]):
        self.fds = {rel: os.open(os.path.join(root, rel), os.O_RDONLY) for rel in {r for r, _ in pairs}}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def read_source_random(fds: SourceFds, pairs: Sequence[Tuple[str, int]], block: int = 4096) -> int:
    n = 0
    for rel, off in pairs:
        n += len(os.pread(fds.fds[rel], block, off))
    return n


def read_image_threads(img, files: Sequence[Tuple[str, int]], threads: int, block: int = MiB) -> int:
    """Sequential 1 MiB reads of all files, files spread over `threads` Python threads."""
    from concurrent.futures import ThreadPoolExecutor

    shards = [list(files[i::threads]) for i in range(threads)]
    with ThreadPoolExecutor(threads) as ex:
        return sum(ex.map(lambda fs: read_image_sequential(img, fs, block), shards))


def build_identity() -> Dict[str, str]:
    """Which nydus-hybrid is measured: git HEAD of the checkout and the extension module's
    sha256 prefix and mtime (run_all.py warns when the module changes during a run)."""
    import hashlib
    import importlib.util

    ident: Dict[str, str] = {}
    spec = importlib.util.find_spec("nydus_hybrid._core")
    if spec and spec.origin:
        with open(spec.origin, "rb") as f:
            ident["core_sha256"] = hashlib.sha256(f.read()).hexdigest()[:12]
        ident["core_mtime"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(spec.origin)))
        try:
            ident["git_head"] = (
                subprocess.run(
                    ["git", "-C", os.path.dirname(spec.origin), "rev-parse", "--short", "HEAD"],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                or "?"
            )
        except OSError:
            ident["git_head"] = "?"
    return ident


def machine_info() -> Dict[str, str]:
    info = {
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem"] = f"{int(f.readline().split()[1]) // 1024} MiB"
    except OSError:
        pass
    try:
        v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "erofs-utils"], capture_output=True, text=True)
        info["erofs-utils"] = v.stdout.strip() or "?"
    except OSError:
        info["erofs-utils"] = "?"
    try:
        import re

        m = re.search(r"v(\d+\.\d+\.\d+)", subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout)
        info["zstd"] = m.group(1) if m else "?"
    except OSError:
        pass
    return info


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


def ensure_tiny_tree(count: int, size: int = 512) -> Corpus:
    """One 4 MiB random file followed by `count` tiny random files: shows how peak RSS
    scales with the number of small files (the big file's chunks are freed first, which
    is the usual situation in a real tree)."""
    root = os.path.join(bench_dir(), f"tiny-{count}x{size}-v1")
    marker = root + ".done"
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        rng = random.Random(count * 7 + size)
        _write(os.path.join(root, "a.bin"), rng.randbytes(4 * MiB), 1_700_000_000)
        for i in range(count):
            _write(os.path.join(root, f"z/d{i // 100:03d}/f{i:06d}"), rng.randbytes(size), 1_700_000_000)
        with open(marker, "w") as f:
            f.write("ok\n")
    files = scan_files(root)
    return Corpus(root, files, sum(s for _, s in files))


# --------------------------------------------------------------------------- storage (registry)
#
# Lazy reads through the registry backend against a real docker-registry on 127.0.0.1
# (tests/servers.py), with curl fetching the same blob as the baseline. Inputs are
# incompressible, so stored bytes = file bytes and the byte counts compare directly.

STORAGE_VERSION = 1
REGISTRY_BIN = "/usr/bin/docker-registry"
REGISTRY_REPO = "bench/x"
TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def storage_mb() -> int:
    """Size of the image for cold / warm throughput (MiB)."""
    return int(os.environ.get("NYDUS_BENCH_STORAGE_MB", "64" if IN_CI else "256"))


def partial_mb() -> int:
    """Size of the many-file image of which a fraction is read (MiB)."""
    return int(os.environ.get("NYDUS_BENCH_PARTIAL_MB", "60" if IN_CI else "500"))


def partial_fraction() -> float:
    return float(os.environ.get("NYDUS_BENCH_PARTIAL_FRACTION", "0.05"))


def storage_missing() -> Optional[str]:
    """Why the storage benchmarks cannot run here, or None."""
    if not os.access(REGISTRY_BIN, os.X_OK):
        return f"{REGISTRY_BIN} missing (apt-get install docker-registry)"
    if not shutil.which("curl"):
        return "curl missing (apt-get install curl)"
    return None


def ensure_storage_tree(mb: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> Corpus:
    """Incompressible files of whole MiB (1-8 MiB), so with 1 MiB chunks every chunk is a
    full 1 MiB stored raw and the blob's data is exactly what `curl` fetches in 1 MiB ranges."""
    mb = storage_mb() if mb is None else mb
    root = os.path.join(bench_dir(), f"storage-{mb}mib-v{STORAGE_VERSION}")
    marker = root + ".done"
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        log(f"generating {mb} MiB of incompressible files in {root} ...")
        rng = random.Random(0x5707A6E + mb)
        left, i = mb, 0
        while left > 0:
            n = min(left, rng.choice((1, 2, 3, 4, 6, 8)))
            _write(os.path.join(root, f"d{i % 4}/file{i:04d}.bin"), rng.randbytes(n * MiB), 1_700_000_000)
            left -= n
            i += 1
        with open(marker, "w") as f:
            json.dump({"mb": mb, "version": STORAGE_VERSION}, f)
    files = scan_files(root)
    return Corpus(root, files, sum(s for _, s in files))


def ensure_partial_tree(mb: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> Corpus:
    """Many incompressible files, sizes log-uniform in 4 KiB - 2 MiB (mean ~340 KiB)."""
    mb = partial_mb() if mb is None else mb
    root = os.path.join(bench_dir(), f"partial-{mb}mib-v{STORAGE_VERSION}")
    marker = root + ".done"
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        log(f"generating {mb} MiB of 4 KiB-2 MiB files in {root} ...")
        rng = random.Random(0x9A27 + mb)
        left, i = mb * MiB, 0
        while left > 0:
            n = min(left, _log_uniform(rng, 4096, 2 * MiB))
            _write(os.path.join(root, f"d{i % 16:02d}/f{i:05d}.bin"), rng.randbytes(n), 1_700_000_000)
            left -= n
            i += 1
        with open(marker, "w") as f:
            json.dump({"mb": mb, "version": STORAGE_VERSION}, f)
    files = scan_files(root)
    return Corpus(root, files, sum(s for _, s in files))


def pick_fraction(files: Sequence[Tuple[str, int]], fraction: float, seed: int = 5) -> List[Tuple[str, int]]:
    """A fixed random sample of `fraction` of the files, in random (not blob) order."""
    k = max(1, round(len(files) * fraction))
    return random.Random(seed).sample(list(files), k)


def start_registry(tmpdir: Optional[str] = None):
    """An anonymous docker-registry on 127.0.0.1 (tests/servers.py), started. Without
    `tmpdir` its storage is a private temp dir, removed by `close()`."""
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    import servers

    return servers.Registry(tmpdir).start()


def registry_config(reg, cache_dir: str, batch_size: int = 0) -> dict:
    return {
        "version": 2,
        "backend": {
            "type": "registry",
            "registry": {"scheme": "http", "host": reg.host, "repo": REGISTRY_REPO, "timeout": 30},
        },
        "cache": {"type": "blobcache", "filecache": {"work_dir": cache_dir}},
        "rafs": {"batch_size": batch_size},
    }


@dataclass
class PushedImage:
    tree: Corpus
    boot: str
    blob_id: str
    blob_size: int
    chunks: int
    url: str  # the blob's GET URL at the registry

    @property
    def digest(self) -> str:
        return "sha256:" + self.blob_id


def build_and_push(tree: Corpus, out: str, reg) -> PushedImage:
    """Build `tree` (1 MiB chunks) into `out` and push its blob with our upload code."""
    import nydus_hybrid
    from nydus_hybrid.blobs import push_blob

    fresh_dir(out)
    boot = os.path.join(out, "image.boot")
    report = nydus_hybrid.build(tree.root, boot, os.path.join(out, "blobs"), chunk_size=MiB, progress=False)
    digest, _ = push_blob(registry_config(reg, os.path.join(out, "unused")), report.blob_path)
    assert digest == "sha256:" + report.blob_id, (digest, report.blob_id)
    url = f"http://{reg.host}/v2/{REGISTRY_REPO}/blobs/{digest}"
    return PushedImage(tree, boot, report.blob_id, report.blob_size, report.chunks, url)


def registry_cpu_s(reg) -> Optional[float]:
    """CPU seconds (user + sys) the registry process has used so far."""
    proc = getattr(reg, "_proc", None)
    if proc is None:
        return None
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def registry_blob_requests(reg, digest: str) -> Tuple[int, int]:
    """(successful GETs, HEADs) of the blob in the registry's access log so far."""
    gets = heads = 0
    for method, path, status in reg.request_log():
        if digest in path and status in (200, 206):
            gets += method == "GET"
            heads += method == "HEAD"
    return gets, heads


def registry_requests_after(
    reg, digest: str, before: Tuple[int, int], expect_gets: int, timeout: float = 3.0
) -> Tuple[int, int]:
    """The blob's GETs and HEADs since `before`; the log trails the replies, so poll until
    at least `expect_gets` GETs show up (or `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        g, h = registry_blob_requests(reg, digest)
        if g - before[0] >= expect_gets or time.monotonic() > deadline:
            return g - before[0], h - before[1]
        time.sleep(0.05)


@dataclass
class Fetch:
    """One timed fetch: wall s, bytes delivered to the caller, client CPU s, registry CPU s,
    HTTP requests sent, bytes the backend fetched."""

    wall: float
    nbytes: int
    cpu: float
    reg_cpu: Optional[float]
    requests: int
    fetched: int
    metrics: Optional[dict] = None

    @property
    def mib_s(self) -> float:
        return self.nbytes / MiB / self.wall

    @property
    def backend_share(self) -> Optional[float]:
        """Share of the wall time spent inside backend requests (ours, one thread only:
        with several threads the latencies overlap)."""
        if not self.metrics:
            return None
        return self.metrics["backend"]["read_cumulative_latency_millis_total"] / 1000 / self.wall


def curl_fetch(reg, img: PushedImage, step: int = 0, parallel: int = 1) -> Fetch:
    """curl fetches the whole blob (`step` 0: one GET), or all of it in `step`-byte Range
    GETs (one curl process, one connection; `parallel` > 1: that many transfers at once)."""
    import resource

    fd, cfg = tempfile.mkstemp(prefix="nydus-bench-curl-", suffix=".cfg")
    ranges = (
        [(0, img.blob_size)] if not step else [(o, min(img.blob_size, o + step)) for o in range(0, img.blob_size, step)]
    )
    with os.fdopen(fd, "w") as f:
        for i, (lo, hi) in enumerate(ranges):
            if i:
                f.write("next\n")
            f.write(
                f'url = "{img.url}"\noutput = "/dev/null"\nsilent\nshow-error\nfail\n'
                f'write-out = "%{{size_download}}\\n"\n'
            )
            if step:
                f.write(f'range = "{lo}-{hi - 1}"\n')
    argv = ["curl", "-K", cfg] + (["--parallel", "--parallel-max", str(parallel)] if parallel > 1 else [])
    try:
        r0, c0 = resource.getrusage(resource.RUSAGE_CHILDREN), registry_cpu_s(reg)
        t = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - t
        r1, c1 = resource.getrusage(resource.RUSAGE_CHILDREN), registry_cpu_s(reg)
    finally:
        os.unlink(cfg)
    n = sum(int(x) for x in out.split())
    assert n == img.blob_size, f"curl fetched {n} of {img.blob_size} bytes"
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return Fetch(wall, n, cpu, None if c0 is None or c1 is None else c1 - c0, len(ranges), n)


def read_image_blocks_parallel(img, files: Sequence[Tuple[str, int]], threads: int, block: int = MiB) -> int:
    """Every file in `block` reads, in file order, taken from one shared queue by `threads`
    Python threads (so ~`threads` reads are in flight, in order, like a readahead)."""
    from concurrent.futures import ThreadPoolExecutor

    work = iter([("/" + rel, off) for rel, size in files for off in range(0, size, block)])
    lock = threading.Lock()

    def worker() -> int:
        n = 0
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                return n
            n += len(img.read(item[0], item[1], block))

    with ThreadPoolExecutor(threads) as ex:
        return sum(f.result() for f in [ex.submit(worker) for _ in range(threads)])


def read_files_readinto(root: str, files: Sequence[Tuple[str, int]], block: int = MiB) -> int:
    """Plain files, `open(..., buffering=0).readinto` into one reused 1 MiB buffer."""
    buf = bytearray(block)
    n = 0
    for rel, _ in files:
        with open(os.path.join(root, rel), "rb", buffering=0) as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                n += k
    return n


def image_fetch(
    reg,
    img: PushedImage,
    cache_dir: str,
    batch_size: int = 0,
    threads: int = 1,
    files: Optional[Sequence[Tuple[str, int]]] = None,
    whole_files: bool = False,
) -> Fetch:
    """Cold read through the registry backend: a fresh (empty) cache dir, `Image.open`,
    then `files` (default: all) in 1 MiB reads (`whole_files`: one `im.read(path)` per
    file), on `threads` threads. Open and the blob-metadata fetch are inside the timing."""
    import nydus_hybrid

    files = img.tree.files if files is None else files
    fresh_dir(cache_dir)
    cfg = registry_config(reg, cache_dir, batch_size)
    c0, p0 = registry_cpu_s(reg), time.process_time()
    t = time.perf_counter()
    im = nydus_hybrid.Image.open(img.boot, config=cfg)
    if whole_files:
        n = sum(len(im.read("/" + rel)) for rel, _ in files)
    elif threads > 1:
        n = read_image_blocks_parallel(im, files, threads)
    else:
        n = read_image_sequential(im, files)
    wall = time.perf_counter() - t
    cpu, c1 = time.process_time() - p0, registry_cpu_s(reg)
    m = im.metrics()
    del im
    want = sum(s for _, s in files)
    assert n == want, f"read {n} of {want} bytes"
    b = m["backend"]
    return Fetch(
        wall, n, cpu, None if c0 is None or c1 is None else c1 - c0, b["requests_total"], b["read_amount_total"], m
    )


@dataclass
class ColdVariant:
    name: str
    kind: str  # "curl" or "image"
    size: int = 0  # curl: Range size (0 = whole blob); image: rafs.batch_size (amplify_io)
    threads: int = 1  # curl: parallel transfers; image: Python reader threads
    peer: str = ""  # image: the curl variant sending requests of the same size, as many at once


COLD_VARIANTS = [
    ColdVariant("curl: whole blob, 1 GET", "curl"),
    ColdVariant("curl: 1 MiB Range GETs", "curl", MiB),
    ColdVariant("curl: 1 MiB Range GETs, 4 parallel", "curl", MiB, 4),
    ColdVariant("curl: 4 MiB Range GETs", "curl", 4 * MiB),
    ColdVariant("curl: 4 MiB Range GETs, 4 parallel", "curl", 4 * MiB, 4),
    ColdVariant("Image.read, batch_size 0", "image", 0, 1, "curl: 1 MiB Range GETs"),
    ColdVariant("Image.read, batch_size 1 MiB", "image", MiB, 1, "curl: 1 MiB Range GETs"),
    ColdVariant("Image.read, batch_size 4 MiB", "image", 4 * MiB, 1, "curl: 4 MiB Range GETs"),
    ColdVariant("Image.read, batch_size 0, 4 threads", "image", 0, 4, "curl: 1 MiB Range GETs, 4 parallel"),
    ColdVariant("Image.read, batch_size 4 MiB, 4 threads", "image", 4 * MiB, 4, "curl: 4 MiB Range GETs, 4 parallel"),
]
COLD_BASELINE = COLD_VARIANTS[0].name


def cold_fetch(v: ColdVariant, reg, img: PushedImage, cache_dir: str) -> Fetch:
    if v.kind == "curl":
        return curl_fetch(reg, img, v.size, v.threads)
    return image_fetch(reg, img, cache_dir, v.size, v.threads)


PARTIAL_BATCHES = [0, MiB, 4 * MiB]


def partial_fetch(
    reg, img: PushedImage, picks: Sequence[Tuple[str, int]], cache_dir: str, batch_size: int
) -> Tuple[Fetch, int, int]:
    """Cold read of the picked files (whole, in the sample's random order); returns the
    fetch and the registry's count of blob GETs and HEADs it served for it."""
    before = registry_blob_requests(reg, img.digest)
    f = image_fetch(reg, img, cache_dir, batch_size, files=picks, whole_files=True)
    gets, heads = registry_requests_after(reg, img.digest, before, f.metrics["backend"]["read_count"])
    return f, gets, heads


def mib(n: float) -> str:
    return f"{n / MiB:,.1f}"


# --------------------------------------------------------------------------- daemon
#
# `python -m nydus_hybrid.daemon` (nydusd-compatible CLI, HTTP API on a unix socket),
# started and spoken to with the compat tests' helpers (tests/compat/daemontools.py):
# start-up time (exec -> API socket accepts -> GET /api/v1/daemon says RUNNING) against
# bare interpreter starts, and API latency under FUSE read load against the idle mount.

COMPAT_DIR = os.path.join(TESTS_DIR, "compat")
DAEMON_STARTUP_GOAL_MS = 300
DAEMON_TREE_VERSION = 1
DEDICATED = "daemon: dedicated, bootstrap mounted (FUSE)"
SHARED = "daemon: shared, no bootstrap"
# (row name, `python -c` code): the floor, then what the daemon imports, biggest last.
STARTUP_BASELINES = (
    ("python -c pass (floor)", "pass"),
    ("python -c 'import nydus_hybrid._core'", "import nydus_hybrid._core"),
    ("python -c 'import aiohttp.web'", "import aiohttp.web"),
    ("python -c 'import nydus_hybrid.daemon.main'", "import nydus_hybrid.daemon.main"),
)
FLOOR = STARTUP_BASELINES[0][0]
API_CONCURRENCY = 100  # GET /api/v1/metrics in flight at once, one connection each
API_SEQUENTIAL = 25  # then this many one after another on one keep-alive connection
API_READERS = 4


def daemontools():
    """tests/compat/daemontools.py (imported the way the compat tests import it)."""
    if COMPAT_DIR not in sys.path:
        sys.path.insert(0, COMPAT_DIR)
    import daemontools as dt

    return dt


def daemon_missing() -> Optional[str]:
    """Why the daemon benchmarks cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (the daemon mounts FUSE; drop_caches)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    try:
        import aiohttp  # noqa: F401
        import jsonschema  # noqa: F401  (daemontools)
        import yaml  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


def daemon_rounds() -> int:
    """Start-ups per row (NYDUS_BENCH_DAEMON_ROUNDS; default 20, 10 with CI)."""
    return max(1, int(os.environ.get("NYDUS_BENCH_DAEMON_ROUNDS", "10" if IN_CI else "20")))


def daemon_api_rounds() -> int:
    """Bursts per state (idle / loaded) for the API latency (NYDUS_BENCH_DAEMON_API_ROUNDS)."""
    return max(1, int(os.environ.get("NYDUS_BENCH_DAEMON_API_ROUNDS", "10" if IN_CI else "20")))


def daemon_mb() -> int:
    """Size of the tree the reader processes read through the daemon (NYDUS_BENCH_DAEMON_MB)."""
    return int(os.environ.get("NYDUS_BENCH_DAEMON_MB", "32" if IN_CI else "64"))


def pct(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of xs, nearest rank (as fusebench.pct)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def reap(procs) -> None:
    """Wait for child processes that were told to stop; kill one that hangs."""
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


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


# ---- start-up


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


def time_python(code: str) -> Startup:
    """`python -c code`, spawned exactly like the daemon: exec -> the code has run (it then
    writes one byte to a pipe, the counterpart of the daemon answering RUNNING), and
    exec -> exit."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code + "\nimport os; os.write(1, b'.')"], stdout=subprocess.PIPE)
    ready = p.stdout.read(1)
    t_ready = time.perf_counter()
    p.stdout.close()
    if p.wait() != 0 or ready != b".":
        raise RuntimeError(f"python -c {code!r}: exit {p.returncode}")
    return Startup(None, t_ready - t0, exit_s=time.perf_counter() - t0)


class DaemonStart:
    """One timed start of `python -m nydus_hybrid.daemon fuse` with the flags the compat
    tests (and nydus-snapshotter) use: dedicated with `image` (a daemontools.BuiltImage,
    localfs + blobcache v1 config, `--bootstrap`) or shared without. `start()` returns once
    RUNNING was seen, polling every `poll` s; `stop()` SIGTERMs it (it unmounts)."""

    def __init__(self, workdir: str, image=None, poll: float = 0.001):
        self.dt = daemontools()
        self.workdir = fresh_dir(workdir)
        self.mnt = os.path.join(self.workdir, "mnt")
        os.makedirs(self.mnt)
        self.sock = os.path.join(self.workdir, "api.sock")
        self.log = os.path.join(self.workdir, "daemon.log")
        self.poll = poll
        argv = self.dt.DAEMON + ["fuse", "--thread-num", "4"]
        if image is not None:
            cfg = os.path.join(self.workdir, "config.json")
            with open(cfg, "w") as f:
                json.dump(self.dt.v1_config("/", image.blobs, os.path.join(self.workdir, "cache")), f)
            argv += ["--config", cfg, "--bootstrap", str(image.boot)]
        self.argv = argv + [
            "--mountpoint",
            self.mnt,
            "--apisock",
            self.sock,
            "--log-level",
            "info",
            "--failover-policy",
            "resend",
        ]
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
        conn = None
        try:
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
        )
        return self.result

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
    """The compat tests' small image (daemontools.BuiltImage: 3 files, 2.5 MB)."""
    from pathlib import Path

    return daemontools().BuiltImage(Path(fresh_dir(workdir)), tag="bench")


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


# ---- API latency under FUSE read load

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


def ensure_daemon_tree(mb: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> Corpus:
    """Files of 4 MiB (4 chunks each), alternately text-like (zstd) and incompressible (raw)."""
    mb = daemon_mb() if mb is None else mb
    root = os.path.join(bench_dir(), f"daemon-{mb}mib-v{DAEMON_TREE_VERSION}")
    marker = root + ".done"
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        log(f"generating {mb} MiB of 4 MiB files in {root} ...")
        rng = random.Random(0xDAE + mb)
        pool = _text_pool(rng, 8 * MiB)
        for i in range(max(1, mb // 4)):
            data = _text_bytes(rng, pool, 4 * MiB) if i % 2 == 0 else rng.randbytes(4 * MiB)
            _write(os.path.join(root, f"f{i:03d}.{'txt' if i % 2 == 0 else 'bin'}"), data, 1_700_000_000)
        with open(marker, "w") as f:
            json.dump({"mb": mb, "version": DAEMON_TREE_VERSION}, f)
    files = scan_files(root)
    return Corpus(root, files, sum(s for _, s in files))


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
    """A dedicated daemon (daemontools.Daemon: `--thread-num 4`, localfs + blobcache v1
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

        self.dt = daemontools()
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
        log(
            f"  round {r + 1}/{rounds}: daemon burst p50 idle {pct(res.burst[(DAEMON, 'idle')][-1], 0.5) / 1000:5.1f} ms, "
            f"loaded {pct(res.burst[(DAEMON, 'loaded')][-1], 0.5) / 1000:5.1f} ms (control "
            f"{pct(res.burst[(CONTROL, 'idle')][-1], 0.5) / 1000:5.1f} / {pct(res.burst[(CONTROL, 'loaded')][-1], 0.5) / 1000:5.1f}); "
            f"readers {(b_c - b_b) / MiB / (t_c - t_b):6.0f} MiB/s (alone {(b_b - b_a) / MiB / (t_b - t_a):6.0f})"
        )
    load.readers(False)
    res.data_read, res.reader_bytes = load.data_read() - dr0, load.read_bytes() - rb0
    return res
