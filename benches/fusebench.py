"""FUSE benchmark machinery (used by test_fuse.py and `run_all.py --only fuse`).

Three readers of ONE image built from one source tree:

* **kernel EROFS** (the ceiling): `Image.export_block` of the image, mounted file-backed by
  the kernel's EROFS (`nydus_hybrid.mounts.erofs`);
* **nydus-hybrid mount** (ours): the Rust FUSE server, `python -m nydus_hybrid mount -B -D`
  in a subprocess (local blobs, `--threads N`);
* **mfusepy shim** (the floor): `nydus_hybrid.mounts.fuse_shim.mount` (libfuse high-level API, one
  Python call per request) in a subprocess.

The source tree (generated once, cached under NYDUS_BENCH_DIR like benchlib's inputs):
`big.bin` (NYDUS_BENCH_FUSE_MB MiB, default 512, 128 with CI; per MiB 3/4 incompressible,
1/4 text-like) and `tree/dNNN/fNNNN`, NYDUS_BENCH_FUSE_FILES small files (default 100,000,
20,000 with CI; 1000 per directory, 1-100 bytes each).

Every mount made here is tracked and unmounted by `close_all()` (also registered with
atexit), so a failing benchmark leaves nothing mounted.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from benchlib.corpus import fresh_dir, text_pool
from benchlib.env import IN_CI, bench_dir
from benchlib.measure import proc_cpu_s
from benchlib.pagecache import drop_caches, evict, warm_files
from benchlib.report import GiB, MiB, pct
from tests.helpers.mounts import is_mounted

FUSE_TREE_VERSION = 1
FILES_PER_DIR = 1000
FIRST_BYTE_FILES = 50


# --------------------------------------------------------------------------- settings


def fuse_big_mb() -> int:
    return int(os.environ.get("NYDUS_BENCH_FUSE_MB", "128" if IN_CI else "512"))


def fuse_tree_files() -> int:
    return int(os.environ.get("NYDUS_BENCH_FUSE_FILES", "20000" if IN_CI else "100000"))


def fuse_random_reads() -> int:
    return int(os.environ.get("NYDUS_BENCH_FUSE_RANDOM", "2000" if IN_CI else "5000"))


def fuse_missing() -> Optional[str]:
    """Why the FUSE benchmarks cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount(2), drop_caches)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    from nydus_hybrid.mounts import erofs as kmount

    if not kmount.erofs_available():
        return "needs a kernel that mounts EROFS from a regular file (6.12+)"
    return None


def shim_missing() -> Optional[str]:
    """Why the mfusepy shim column cannot be measured, or None."""
    try:
        import nydus_hybrid.mounts.fuse_shim  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


# --------------------------------------------------------------------------- inputs


@dataclass
class FuseTree:
    root: str
    big_size: int
    dirs: int
    files: int  # small files under tree/

    big_rel = "big.bin"

    @property
    def entries(self) -> int:
        """Entries a full walk of the mount lstat()s: big.bin, tree/, the dirs, the files."""
        return 2 + self.dirs + self.files

    def small(self, i: int) -> str:
        return f"tree/d{i // FILES_PER_DIR:03d}/f{i % FILES_PER_DIR:04d}"

    def first_byte_files(self, n: int = FIRST_BYTE_FILES) -> List[str]:
        """`n` small files, each in a different directory where possible, spread over the tree."""
        step = max(1, self.files // n)
        picks = []
        for k in range(n):
            d = k % self.dirs
            f = (k * step // self.dirs + 37 * k) % FILES_PER_DIR
            picks.append(self.small(d * FILES_PER_DIR + f))
        assert len(set(picks)) == len(picks)
        return picks


def ensure_fuse_tree(
    big_mb: Optional[int] = None, files: Optional[int] = None, log: Callable[[str], None] = lambda s: None
) -> FuseTree:
    big_mb = fuse_big_mb() if big_mb is None else big_mb
    files = fuse_tree_files() if files is None else files
    files = max(FILES_PER_DIR, files // FILES_PER_DIR * FILES_PER_DIR)
    dirs = files // FILES_PER_DIR
    root = os.path.join(bench_dir(), f"fuse-{big_mb}mib-{files}f-v{FUSE_TREE_VERSION}")
    marker = root + ".done"
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        log(f"generating the FUSE tree in {root}: {big_mb} MiB file + {files} small files ...")
        t = time.perf_counter()
        mtime = 1_700_000_000
        rng = random.Random(0xF05E + big_mb)
        noise = rng.randbytes(16 * MiB + MiB)
        text = text_pool(rng, 4 * MiB)
        with open(os.path.join(root, FuseTree.big_rel), "wb") as f:
            for i in range(big_mb):
                if i % 4 == 3:
                    at = rng.randrange(0, len(text) - MiB)
                    f.write(text[at : at + MiB])
                else:
                    at = rng.randrange(0, 16 * MiB) & ~7
                    f.write(noise[at : at + MiB])
        os.utime(os.path.join(root, FuseTree.big_rel), (mtime, mtime))
        rng = random.Random(0x5EED + files)
        for d in range(dirs):
            dp = os.path.join(root, "tree", f"d{d:03d}")
            os.makedirs(dp)
            for i in range(FILES_PER_DIR):
                p = os.path.join(dp, f"f{i:04d}")
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, rng.randbytes(rng.randint(1, 100)))
                os.close(fd)
                os.utime(p, (mtime, mtime))
            os.utime(dp, (mtime, mtime))
        os.utime(os.path.join(root, "tree"), (mtime, mtime))
        log(f"  done in {time.perf_counter() - t:.1f} s")
        with open(marker, "w") as f:
            json.dump({"big_mb": big_mb, "files": files, "version": FUSE_TREE_VERSION}, f)
    return FuseTree(root, big_mb * MiB, dirs, files)


@dataclass
class FuseImage:
    tree: FuseTree
    boot: str
    blob_dir: str
    block: str  # export --block of the same image
    blob_bytes: int
    build_s: float

    @property
    def blob_files(self) -> List[str]:
        return [os.path.join(self.blob_dir, n) for n in sorted(os.listdir(self.blob_dir))]

    def backing(self, kind: str) -> List[str]:
        """The files a reader of kind `kind` reads underneath its mount."""
        return [self.block] if kind == "kernel" else [self.boot, *self.blob_files]


def build_fuse_image(tree: FuseTree, out: str, log: Callable[[str], None] = lambda s: None) -> FuseImage:
    """Build `tree` (zstd, 1 MiB chunks) into `out` and export the block image next to it."""
    import nydus_hybrid

    fresh_dir(out)
    boot, blobs, block = os.path.join(out, "image.boot"), os.path.join(out, "blobs"), os.path.join(out, "image.erofs")
    t = time.perf_counter()
    report = nydus_hybrid.build(tree.root, boot, blobs, compressor="zstd", progress=False)
    build_s = time.perf_counter() - t
    nydus_hybrid.Image.open(boot, blobs).export_block(block)
    log(
        f"fuse: built {tree.entries} entries in {build_s:.1f} s; blob {report.blob_size / MiB:.1f} MiB, "
        f"block image {os.path.getsize(block) / MiB:.1f} MiB"
    )
    return FuseImage(tree, boot, blobs, block, report.blob_size, build_s)


# --------------------------------------------------------------------------- mounts


def _die_with_parent() -> None:
    """In the server child: SIGTERM it (it unmounts) if the benchmark process dies."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_LIVE: List[BenchMount] = []
_LIVE_LOCK = threading.Lock()


class BenchMount:
    """A mounted reader of the image; `close()` unmounts (idempotent)."""

    kind = ""  # "kernel", "ours", "shim"

    def __init__(self, mnt: str, label: str):
        os.makedirs(mnt, exist_ok=True)
        self.mnt = os.path.realpath(mnt)
        self.label = label
        self.proc: Optional[subprocess.Popen] = None
        self.closed = False
        with _LIVE_LOCK:
            _LIVE.append(self)

    def path(self, rel: str) -> str:
        return os.path.join(self.mnt, rel)

    def server_cpu_s(self) -> Optional[float]:
        return proc_cpu_s(self.proc.pid) if self.proc is not None and self.proc.poll() is None else None

    def _unmount(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._unmount()
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)
            if is_mounted(self.mnt):
                subprocess.run(["umount", "-l", self.mnt], check=False, capture_output=True)
            with _LIVE_LOCK:
                if self in _LIVE:
                    _LIVE.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class KernelMount(BenchMount):
    kind = "kernel"

    def __init__(self, img: FuseImage, mnt: str, label: str = "kernel EROFS"):
        from nydus_hybrid.mounts import erofs as kmount

        super().__init__(mnt, label)
        try:
            kmount.mount_erofs(img.block, self.mnt)
        except BaseException:
            self.close()
            raise

    def _unmount(self) -> None:
        from nydus_hybrid.mounts import erofs as kmount

        if not is_mounted(self.mnt):
            return
        try:
            kmount.umount(self.mnt)
        except OSError:
            kmount.umount(self.mnt, lazy=True)


class OurMount(BenchMount):
    """`nydus-hybrid mount` (the Rust server) in a subprocess, up once it printed its JSON line."""

    kind = "ours"

    def __init__(
        self,
        img: FuseImage,
        mnt: str,
        threads: int = 4,
        entry_timeout: Optional[float] = None,
        attr_timeout: Optional[float] = None,
        label: Optional[str] = None,
        read_ahead_kb: Optional[int] = None,
    ):
        super().__init__(mnt, label or f"nydus-hybrid mount, {threads} threads")
        self.threads = threads
        argv = [
            sys.executable,
            "-m",
            "nydus_hybrid",
            "mount",
            "-B",
            img.boot,
            "-D",
            img.blob_dir,
            "--threads",
            str(threads),
        ]
        if entry_timeout is not None:
            argv += ["--entry-timeout", str(entry_timeout)]
        if attr_timeout is not None:
            argv += ["--attr-timeout", str(attr_timeout)]
        self.log = open(self.mnt + ".log", "w+")
        self.proc = subprocess.Popen(
            [*argv, self.mnt], stdout=subprocess.PIPE, stderr=self.log, text=True, preexec_fn=_die_with_parent
        )
        try:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=30)
                self.log.seek(0)
                raise RuntimeError(f"nydus-hybrid mount failed: {self.log.read()[-2000:]}")
            assert json.loads(line)["mounted"] == self.mnt, line
            os.stat(self.mnt)  # INIT answered
            if read_ahead_kb is not None:
                set_read_ahead_kb(self, read_ahead_kb)
        except BaseException:
            self.close()
            raise

    def _unmount(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            self.proc.stdout.close()
            self.log.close()


SHIM_SCRIPT = """
import sys
from nydus_hybrid import Image
from nydus_hybrid.mounts.fuse_shim import mount
mount(Image.open(sys.argv[1], sys.argv[2]), sys.argv[3])
"""


class ShimMount(BenchMount):
    """`nydus_hybrid.mounts.fuse_shim.mount` (mfusepy, libfuse high-level API) in a subprocess, up once
    the mount table shows it and the root answers."""

    kind = "shim"

    def __init__(self, img: FuseImage, mnt: str, label: str = "mfusepy shim", timeout: float = 30.0):
        super().__init__(mnt, label)
        self.log = open(self.mnt + ".log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SHIM_SCRIPT, img.boot, img.blob_dir, self.mnt],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        try:
            deadline = time.monotonic() + timeout
            while not is_mounted(self.mnt):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    raise RuntimeError(f"the mfusepy shim did not mount: {self.log.read()[-2000:]}")
                time.sleep(0.02)
            os.stat(self.mnt)
        except BaseException:
            self.close()
            raise

    def _unmount(self) -> None:
        from nydus_hybrid.mounts import erofs as kmount

        try:
            if is_mounted(self.mnt):
                try:
                    kmount.umount(self.mnt)
                except OSError:
                    kmount.umount(self.mnt, lazy=True)
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            self.log.close()


def _bdi_dev(m: BenchMount) -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            v = line.split()
            if v[4] == m.mnt:
                return v[2]
    raise RuntimeError(f"{m.mnt} is not mounted")


def set_read_ahead_kb(m: BenchMount, kb: int) -> None:
    """The kernel's readahead window for one FUSE mount (its bdi, `0:NN`); FUSE offers the
    server 128 KiB at INIT and a server cannot ask for more, but root can raise it here."""
    with open(f"/sys/class/bdi/{_bdi_dev(m)}/read_ahead_kb", "w") as f:
        f.write(f"{kb}\n")


def close_all() -> None:
    """Unmount every mount made here that is still up (newest first)."""
    with _LIVE_LOCK:
        live = list(reversed(_LIVE))
    for m in live:
        try:
            m.close()
        except Exception as e:  # keep going: every mount must go
            print(f"fusebench: closing {m.mnt}: {e}", file=sys.stderr)


atexit.register(close_all)


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # so `finally` blocks and atexit unmount everything


if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _on_sigterm)


@dataclass
class Reader:
    """How to mount one row of the tables. `main`: also measured page-cache-warm, from disk,
    for random reads, find + stat and first byte (the other rows are scaling variants)."""

    name: str
    kind: str
    make: Callable[[FuseImage, str], BenchMount]
    main: bool = True


KERNEL_NAME = "kernel EROFS"
SHIM_NAME = "mfusepy shim"


def ours_name(threads: int, read_ahead_kb: Optional[int] = None) -> str:
    n = f"nydus-hybrid mount, {threads} thread{'s' if threads > 1 else ''}"
    return n + (f", read_ahead_kb {read_ahead_kb}" if read_ahead_kb else "")


OURS_NAME = ours_name(4)


def readers(
    threads: Sequence[int] = (4, 2, 1),
    read_ahead: Sequence[Tuple[int, int]] = ((4, 1024), (1, 1024)),
    shim: bool = True,
) -> List[Reader]:
    """The kernel baseline first, ours with 4 threads (the default), the scaling variants
    (other thread counts, a larger readahead window), then the shim."""
    out = [Reader(KERNEL_NAME, "kernel", lambda img, m: KernelMount(img, m))]
    for t in threads:
        out.append(
            Reader(
                ours_name(t), "ours", lambda img, m, t=t: OurMount(img, m, threads=t, label=ours_name(t)), main=t == 4
            )
        )
    for t, kb in read_ahead:
        out.append(
            Reader(
                ours_name(t, kb),
                "ours",
                lambda img, m, t=t, kb=kb: OurMount(img, m, threads=t, read_ahead_kb=kb, label=ours_name(t, kb)),
                main=False,
            )
        )
    if shim:
        out.append(Reader(SHIM_NAME, "shim", lambda img, m: ShimMount(img, m)))
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


# --------------------------------------------------------------------------- caches


def drop_and_rewarm(img: FuseImage) -> None:
    """`echo 3 > drop_caches`, then read the backing files (bootstrap, blob, block image)
    back, so what follows measures the filesystems, not the disk."""
    drop_caches()
    warm_files(img.backing("ours") + img.backing("kernel"))


# --------------------------------------------------------------------------- workloads


def read_seq(path: str, start: int = 0, length: Optional[int] = None, block: int = MiB) -> int:
    """`length` bytes (default: to EOF) from `start` in `block` reads into one buffer."""
    buf = bytearray(block)
    n = 0
    with open(path, "rb", buffering=0) as f:
        if start:
            f.seek(start)
        while length is None or n < length:
            k = f.readinto(buf) if length is None or length - n >= block else f.readinto(memoryview(buf)[: length - n])
            if not k:
                break
            n += k
    return n


def read_parallel(path: str, size: int, readers: int, block: int = MiB) -> int:
    """`readers` threads, each reading its own 1/readers of the file sequentially."""
    part = -(-size // readers) // block * block
    out = [0] * readers

    def one(k: int) -> None:
        lo = k * part
        out[k] = read_seq(path, lo, max(0, min(size, lo + part) - lo) if k < readers - 1 else size - lo, block)

    ts = [threading.Thread(target=one, args=(k,)) for k in range(readers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(out)


@dataclass
class Timed:
    wall: float
    nbytes: int
    client_cpu: float  # this process (user + sys; the kernel's work for kernel EROFS is here)
    server_cpu: Optional[float]  # the FUSE server process

    @property
    def gib_s(self) -> float:
        return self.nbytes / GiB / self.wall


def timed_read(m: BenchMount, fn: Callable[[], int]) -> Timed:
    s0 = m.server_cpu_s()
    c0 = time.process_time()
    t = time.perf_counter()
    n = fn()
    wall = time.perf_counter() - t
    c1 = time.process_time()
    s1 = m.server_cpu_s()
    return Timed(wall, n, c1 - c0, None if s0 is None or s1 is None else s1 - s0)


def random_offsets(size: int, count: int, seed: int = 4242, block: int = 4096) -> List[int]:
    """`count` distinct `block`-aligned offsets in [0, size), in random order."""
    pages = size // block
    return [p * block for p in random.Random(seed).sample(range(pages), min(count, pages))]


def read_random(path: str, offsets: Sequence[int], block: int = 4096) -> List[float]:
    """os.pread of `block` bytes at each offset; each read's latency in µs."""
    lat = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            t = time.perf_counter_ns()
            if len(os.pread(fd, block, off)) != block:
                raise AssertionError(f"short read at {off}")
            lat.append((time.perf_counter_ns() - t) / 1000)
    finally:
        os.close(fd)
    return lat


def walk_stat(root: str) -> int:
    """find + stat: os.fwalk the tree and os.lstat every entry relative to its directory fd
    (what `find -printf '%s'` does). Returns the number of entries stat()ed."""
    n = 0
    for _, dirnames, filenames, dfd in os.fwalk(root):
        for name in dirnames + filenames:
            os.lstat(name, dir_fd=dfd)
            n += 1
    return n


class DirFds:
    """An open fd of every directory of the tree and its entry names, so a stat-only pass
    looks up just the last path component of each entry."""

    def __init__(self, root: str):
        self.items: List[Tuple[int, List[str]]] = []
        for dirpath, dirnames, filenames in os.walk(root):
            self.items.append((os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY), dirnames + filenames))

    @property
    def entries(self) -> int:
        return sum(len(names) for _, names in self.items)

    def stat_all(self) -> int:
        n = 0
        for fd, names in self.items:
            for name in names:
                os.lstat(name, dir_fd=fd)
                n += 1
        return n

    def close(self) -> None:
        for fd, _ in self.items:
            os.close(fd)
        self.items = []


def fstat_roundtrip(path: str, count: int = 20000) -> List[float]:
    """os.fstat of one open file, `count` times; µs each. With attr_timeout 0 every call is
    one FUSE GETATTR: the bare round trip to the server."""
    fd = os.open(path, os.O_RDONLY)
    lat = []
    try:
        for _ in range(count):
            t = time.perf_counter_ns()
            os.fstat(fd)
            lat.append((time.perf_counter_ns() - t) / 1000)
    finally:
        os.close(fd)
    return lat


def first_bytes(m: BenchMount, rels: Sequence[str]) -> List[float]:
    """open + read(1) + close of each file (never read before on this mount); µs each."""
    lat = []
    for rel in rels:
        p = m.path(rel)
        t = time.perf_counter_ns()
        fd = os.open(p, os.O_RDONLY)
        b = os.read(fd, 1)
        os.close(fd)
        lat.append((time.perf_counter_ns() - t) / 1000)
        if len(b) != 1:
            raise AssertionError(f"{p}: read {len(b)} bytes")
    return lat


def fuse_mount_info(m: BenchMount) -> Dict[str, str]:
    """max_read and the readahead window (KiB) the kernel uses for a mount."""
    info: Dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            v = line.split()
            if v[4] == m.mnt:
                dev = v[2]
                opts = line.split(" - ")[1].split()[2]
                for o in opts.split(","):
                    if o.startswith("max_read="):
                        info["max_read"] = o.split("=", 1)[1]
                try:
                    with open(f"/sys/class/bdi/{dev}/read_ahead_kb") as g:
                        info["read_ahead_kb"] = g.read().strip()
                except OSError:
                    pass
    return info


# --------------------------------------------------------------------------- the whole section, interleaved


@dataclass
class FuseResults:
    readers: List[Reader]
    seq: Dict[Tuple[str, str, int], List[Timed]] = field(
        default_factory=dict
    )  # (reader, "warm"|"dropped"|"disk", streams)
    rnd: Dict[str, List[List[float]]] = field(default_factory=dict)  # reader -> per round latencies (µs)
    walk: Dict[Tuple[str, str], List[float]] = field(default_factory=dict)  # (reader, "cold"|"cached") -> walls
    stat_pass: Dict[str, List[float]] = field(default_factory=dict)  # reader -> walls of an lstat-only pass
    roundtrip: Dict[int, List[float]] = field(default_factory=dict)  # threads -> fstat µs, timeouts 0
    first: Dict[str, List[List[float]]] = field(default_factory=dict)  # reader -> per round latencies (µs)
    mount_info: Dict[str, Dict[str, str]] = field(default_factory=dict)


TIMEOUT0_NAME = "nydus-hybrid mount, 4 threads, timeouts 0"


def ours_timeout0(threads: int = 4) -> Reader:
    name = TIMEOUT0_NAME.replace("4 threads", f"{threads} thread{'s' if threads > 1 else ''}")
    return Reader(
        name,
        "ours",
        lambda img, m: OurMount(img, m, threads=threads, entry_timeout=0, attr_timeout=0, label=name),
        main=False,
    )


def run_section(
    img: FuseImage,
    work: str,
    rounds: int,
    rdrs: Optional[List[Reader]] = None,
    random_count: Optional[int] = None,
    disk_cold: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> FuseResults:
    """Every FUSE figure of run_all.py; inside each round the readers run one after another
    (round-robin), so load from elsewhere hits them alike."""
    tree = img.tree
    rdrs = readers() if rdrs is None else rdrs
    main = [r for r in rdrs if r.main]
    random_count = fuse_random_reads() if random_count is None else random_count
    res = FuseResults(rdrs)
    mnts: Dict[str, BenchMount] = {}

    def fresh(r: Reader) -> BenchMount:
        old = mnts.pop(r.name, None)
        if old:
            old.close()
        mnts[r.name] = r.make(img, os.path.join(work, "mnt-" + slug(r.name)))
        return mnts[r.name]

    try:
        for r in rdrs:
            fresh(r)
            if r.kind != "kernel":
                res.mount_info[r.name] = fuse_mount_info(mnts[r.name])
        big = {n: m.path(tree.big_rel) for n, m in mnts.items()}
        size = tree.big_size

        # -------- sequential: dropped (first read after drop_caches + backing files back), then
        # warm (the third read)
        for rnd in range(rounds):
            drop_and_rewarm(img)
            for r in rdrs:
                m = mnts[r.name]
                for streams in (1, 4):
                    fn = (
                        (lambda p=big[r.name]: read_seq(p))
                        if streams == 1
                        else (lambda p=big[r.name]: read_parallel(p, size, 4))
                    )
                    for state in ("dropped", "warm"):
                        if state == "warm" and not r.main:
                            continue
                        if state == "warm":
                            fn()  # untimed: the first re-read also promotes every page on the LRU
                        t = timed_read(m, fn)
                        assert t.nbytes == size, (r.name, t.nbytes)
                        res.seq.setdefault((r.name, state, streams), []).append(t)
                    evict(big[r.name])
                log(
                    f"  seq round {rnd + 1}/{rounds} {r.name:48s} "
                    + "  ".join(
                        f"{st}/{s}: {res.seq[(r.name, st, s)][-1].gib_s:5.2f}"
                        for st in ("dropped", "warm")
                        for s in (1, 4)
                        if (r.name, st, s) in res.seq
                    )
                )
            if disk_cold:  # everything dropped, backing files too: the disk is in the figure
                for r in main:
                    drop_caches()
                    t = timed_read(mnts[r.name], lambda p=big[r.name]: read_seq(p))
                    res.seq.setdefault((r.name, "disk", 1), []).append(t)
                    evict(big[r.name])
                    log(f"  disk-cold round {rnd + 1}/{rounds} {r.name:48s} {t.gib_s:5.2f} GiB/s")

        # -------- random 4 KiB
        offsets = random_offsets(size, random_count)
        for rnd in range(rounds):
            drop_and_rewarm(img)
            for r in main:
                lat = read_random(big[r.name], offsets)
                res.rnd.setdefault(r.name, []).append(lat)
                evict(big[r.name])
                log(
                    f"  random round {rnd + 1}/{rounds} {r.name:48s} "
                    f"p50 {pct(lat, 0.5):8.1f} µs  p99 {pct(lat, 0.99):8.1f} µs"
                )
        for r in rdrs:
            if not r.main:
                mnts.pop(r.name).close()
        warm_files(img.backing("ours") + img.backing("kernel"))

        # -------- first byte and find + stat, each on a fresh mount; then stat-only passes
        fbf = tree.first_byte_files()
        t0s = {t: ours_timeout0(t) for t in (4, 2, 1)}
        for rnd in range(rounds):
            for r in main:
                lat = first_bytes(fresh(r), fbf)
                res.first.setdefault(r.name, []).append(lat)
                m = fresh(r)
                t = time.perf_counter()
                n = walk_stat(m.mnt)
                res.walk.setdefault((r.name, "cold"), []).append(time.perf_counter() - t)
                assert n == tree.entries, (r.name, n, tree.entries)
                t = time.perf_counter()
                walk_stat(m.mnt)
                res.walk.setdefault((r.name, "cached"), []).append(time.perf_counter() - t)
                d = DirFds(m.mnt)
                try:
                    d.stat_all()
                    t = time.perf_counter()
                    d.stat_all()
                    res.stat_pass.setdefault(r.name, []).append(time.perf_counter() - t)
                finally:
                    d.close()
                log(
                    f"  walk round {rnd + 1}/{rounds} {r.name:48s} cold {res.walk[(r.name, 'cold')][-1]:6.2f} s  "
                    f"cached {res.walk[(r.name, 'cached')][-1]:6.3f} s  first byte p50 {pct(lat, 0.5):8.1f} µs"
                )
            for threads, r in t0s.items():
                # timeouts 0: every stat goes to the server
                m = fresh(r)
                if threads == 4:
                    t = time.perf_counter()
                    n = walk_stat(m.mnt)
                    res.walk.setdefault((r.name, "cold"), []).append(time.perf_counter() - t)
                    t = time.perf_counter()
                    walk_stat(m.mnt)
                    res.walk.setdefault((r.name, "cached"), []).append(time.perf_counter() - t)
                d = DirFds(m.mnt)
                try:
                    t = time.perf_counter()
                    d.stat_all()
                    res.stat_pass.setdefault(r.name, []).append(time.perf_counter() - t)
                finally:
                    d.close()
                res.roundtrip.setdefault(threads, []).extend(fstat_roundtrip(m.path(tree.big_rel), 5000))
                mnts.pop(r.name).close()
                log(
                    f"  stat round {rnd + 1}/{rounds} {r.name:48s} stat pass {res.stat_pass[r.name][-1]:6.2f} s  "
                    f"fstat round trip p50 {pct(res.roundtrip[threads][-5000:], 0.5):6.1f} µs"
                )
    finally:
        for m in list(mnts.values()):
            m.close()
    return res
