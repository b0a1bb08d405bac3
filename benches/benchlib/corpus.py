"""The generated inputs, deterministic and cached under `bench_dir()` between runs: the
benchmark corpus (text-like, incompressible, duplicate and many small files), the large
sparse-ish file for the bounded-RSS check, the tiny-file trees, the storage and
partial-read trees (incompressible), the daemon's tree of 4 MiB files; `scan_files`,
`fresh_dir` and `dir_bytes` for directories on disk."""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from benchlib.env import bench_dir, bench_mb, bigfile_gb, daemon_mb, partial_mb, storage_mb
from benchlib.report import GiB, MiB

CORPUS_VERSION = 1
BIGFILE_VERSION = 1
STORAGE_VERSION = 1
DAEMON_TREE_VERSION = 1


@dataclass
class Corpus:
    root: str
    files: List[Tuple[str, int]]  # (relative path, size) of every regular file
    total_bytes: int

    @property
    def mib(self) -> float:
        return self.total_bytes / MiB


def text_pool(rng: random.Random, size: int) -> bytes:
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
    pool = text_pool(rng, 16 * MiB)
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


def _cached_tree(root: str, generate: Callable[[str], None], log: Callable[[str], None], what: str) -> Corpus:
    """The tree at ``root``, made by ``generate(root)`` unless an earlier run finished it
    (``root`` names its size and version, and ``root.done`` marks it complete)."""
    marker = root + ".done"
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        log(f"generating {what} in {root} ...")
        t = time.perf_counter()
        generate(root)
        log(f"  done in {time.perf_counter() - t:.1f} s")
        with open(marker, "w") as f:
            f.write("ok\n")
    files = scan_files(root)
    return Corpus(root, files, sum(s for _, s in files))


def ensure_corpus(mb: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> Corpus:
    mb = bench_mb() if mb is None else mb
    root = os.path.join(bench_dir(), f"corpus-{mb}mb-v{CORPUS_VERSION}")
    return _cached_tree(root, lambda r: generate_corpus(r, mb), log, f"a {mb} MiB corpus")


def ensure_bigfile(gb: Optional[float] = None, log: Callable[[str], None] = lambda s: None) -> Corpus:
    """A directory holding one large file: per MiB, 5/8 incompressible (distinct chunks),
    1/8 text-like, 2/8 holes (read back as zeros, which dedup to one chunk)."""
    gb = bigfile_gb() if gb is None else gb
    size = int(gb * GiB) // MiB * MiB

    def generate(root: str) -> None:
        rng = random.Random(0xB16F11E)
        noise = rng.randbytes(16 * MiB + MiB)
        text = text_pool(rng, 4 * MiB)
        with open(os.path.join(root, "big.img"), "wb") as f:
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

    root = os.path.join(bench_dir(), f"bigfile-{size // MiB}mib-v{BIGFILE_VERSION}")
    return _cached_tree(root, generate, log, f"a {size / GiB:.2f} GiB sparse-ish file")


def ensure_tiny_tree(count: int, size: int = 512) -> Corpus:
    """One 4 MiB random file followed by `count` tiny random files: shows how peak RSS
    scales with the number of small files (the big file's chunks are freed first, which
    is the usual situation in a real tree)."""

    def generate(root: str) -> None:
        rng = random.Random(count * 7 + size)
        _write(os.path.join(root, "a.bin"), rng.randbytes(4 * MiB), 1_700_000_000)
        for i in range(count):
            _write(os.path.join(root, f"z/d{i // 100:03d}/f{i:06d}"), rng.randbytes(size), 1_700_000_000)

    root = os.path.join(bench_dir(), f"tiny-{count}x{size}-v1")
    return _cached_tree(root, generate, lambda s: None, f"{count} files of {size} bytes")


def ensure_storage_tree(mb: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> Corpus:
    """Incompressible files of whole MiB (1-8 MiB), so with 1 MiB chunks every chunk is a
    full 1 MiB stored raw and the blob's data is exactly what `curl` fetches in 1 MiB ranges."""
    mb = storage_mb() if mb is None else mb

    def generate(root: str) -> None:
        rng = random.Random(0x5707A6E + mb)
        left, i = mb, 0
        while left > 0:
            n = min(left, rng.choice((1, 2, 3, 4, 6, 8)))
            _write(os.path.join(root, f"d{i % 4}/file{i:04d}.bin"), rng.randbytes(n * MiB), 1_700_000_000)
            left -= n
            i += 1

    root = os.path.join(bench_dir(), f"storage-{mb}mib-v{STORAGE_VERSION}")
    return _cached_tree(root, generate, log, f"{mb} MiB of incompressible files")


def ensure_partial_tree(mb: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> Corpus:
    """Many incompressible files, sizes log-uniform in 4 KiB - 2 MiB (mean ~340 KiB)."""
    mb = partial_mb() if mb is None else mb

    def generate(root: str) -> None:
        rng = random.Random(0x9A27 + mb)
        left, i = mb * MiB, 0
        while left > 0:
            n = min(left, _log_uniform(rng, 4096, 2 * MiB))
            _write(os.path.join(root, f"d{i % 16:02d}/f{i:05d}.bin"), rng.randbytes(n), 1_700_000_000)
            left -= n
            i += 1

    root = os.path.join(bench_dir(), f"partial-{mb}mib-v{STORAGE_VERSION}")
    return _cached_tree(root, generate, log, f"{mb} MiB of 4 KiB-2 MiB files")


def ensure_daemon_tree(mb: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> Corpus:
    """Files of 4 MiB (4 chunks each), alternately text-like (zstd) and incompressible (raw)."""
    mb = daemon_mb() if mb is None else mb

    def generate(root: str) -> None:
        rng = random.Random(0xDAE + mb)
        pool = text_pool(rng, 8 * MiB)
        for i in range(max(1, mb // 4)):
            data = _text_bytes(rng, pool, 4 * MiB) if i % 2 == 0 else rng.randbytes(4 * MiB)
            _write(os.path.join(root, f"f{i:03d}.{'txt' if i % 2 == 0 else 'bin'}"), data, 1_700_000_000)

    root = os.path.join(bench_dir(), f"daemon-{mb}mib-v{DAEMON_TREE_VERSION}")
    return _cached_tree(root, generate, log, f"{mb} MiB of 4 MiB files")


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
