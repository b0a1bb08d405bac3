"""The reader workloads over (relative path, size) lists: `Image.read` against plain reads
of the source files, sequential in 1 MiB blocks (one thread, files spread over threads,
or one shared queue of blocks) and 4 KiB random reads; which reads or files to pick."""

from __future__ import annotations

import os
import random
import threading
from typing import List, Sequence, Tuple

from benchlib.report import MiB


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


def pick_fraction(files: Sequence[Tuple[str, int]], fraction: float, seed: int = 5) -> List[Tuple[str, int]]:
    """A fixed random sample of `fraction` of the files, in random (not blob) order."""
    k = max(1, round(len(files) * fraction))
    return random.Random(seed).sample(list(files), k)
