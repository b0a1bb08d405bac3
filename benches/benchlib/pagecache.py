"""The page cache around a measurement: drop all of it, evict one file, read files back in."""

from __future__ import annotations

import os
from typing import Sequence

from benchlib.corpus import scan_files
from benchlib.report import MiB


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def evict(path: str) -> None:
    """Drop `path`'s pages from the page cache (it is ours to drop: read-only, unmapped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_files(paths: Sequence[str]) -> None:
    """Read each file once (1 MiB `readinto`s), so it is in the page cache."""
    buf = bytearray(MiB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def warm_page_cache(root: str, extra: Sequence[str] = ()) -> None:
    """Read every regular file under `root` (and each path in `extra`) once."""
    warm_files([os.path.join(root, rel) for rel, _ in scan_files(root)] + list(extra))
