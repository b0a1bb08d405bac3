"""A continuous read load on a mount, for the upgrade and failover tests and benchmarks:
reader threads re-read and checksum every file (dropping its page cache first, so each read
reaches the daemon) while `ls -R` loops walk the tree. Every failure is kept with its errno
name; every read's start time and latency are kept, so a caller can find the longest stall
around any moment."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time
from typing import Dict, List, Sequence, Tuple, Union

from nydus_hybrid.waits import scaled


def _read_uncached(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        parts: List[bytes] = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b"".join(parts)
            parts.append(b)
    finally:
        os.close(fd)


class ReadLoad:
    """``roots`` are directories holding the same relative files (``files``: relative path
    -> bytes); with several roots (shared mode), readers go round all of them."""

    def __init__(
        self, roots: Sequence[Union[str, os.PathLike[str]]], files: Dict[str, bytes], readers: int = 4, listers: int = 1
    ) -> None:
        self.roots = [str(r) for r in roots]
        self.digests = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
        self.errors: List[Tuple[float, str, str]] = []  # (time, path, what)
        self.reads: List[Tuple[float, float]] = []  # (start, seconds)
        self.listings = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._reader, args=(i,), daemon=True) for i in range(readers)]
        self._threads += [threading.Thread(target=self._lister, daemon=True) for _ in range(listers)]

    def __enter__(self) -> ReadLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop and join every thread; one still blocked (a request the kernel never got
        answered) is recorded as an error."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            self._fail(",".join(stuck), f"still blocked {timeout:.0f}s after stop: a request was never answered")

    def _fail(self, path: str, what: str) -> None:
        with self._lock:
            self.errors.append((time.time(), path, what))

    def _reader(self, n: int) -> None:
        names = sorted(self.digests)
        i = n
        while not self._stop.is_set():
            root = self.roots[i % len(self.roots)]
            rel = names[i % len(names)]
            i += 1
            path = os.path.join(root, rel)
            t0 = time.monotonic()
            try:
                ok = hashlib.sha256(_read_uncached(path)).hexdigest() == self.digests[rel]
                if not ok:
                    self._fail(path, "wrong bytes")
            except OSError as e:
                self._fail(path, errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else str(e))
            with self._lock:
                self.reads.append((t0, time.monotonic() - t0))

    def _lister(self) -> None:
        while not self._stop.is_set():
            for root in self.roots:
                t0 = time.monotonic()
                r = subprocess.run(["ls", "-R", root], capture_output=True, timeout=120)
                if r.returncode != 0 or r.stderr:
                    self._fail(root, f"ls -R rc={r.returncode}: {r.stderr.decode(errors='replace').strip()[:200]}")
                with self._lock:
                    self.listings += 1
                    self.reads.append((t0, time.monotonic() - t0))

    def longest_stall(self, since: float = 0.0, until: float = float("inf")) -> float:
        """The longest read (seconds) that was in progress at any time in [since, until]
        (monotonic clock)."""
        with self._lock:
            spans = [d for (t, d) in self.reads if t <= until and t + d >= since]
        return max(spans, default=0.0)

    def reads_after(self, t: float) -> int:
        with self._lock:
            return sum(1 for (s, _d) in self.reads if s >= t)

    def wait_reads(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` more reads have completed (proof the mount serves again)."""
        t = time.monotonic()
        deadline = t + scaled(timeout)
        while self.reads_after(t) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {n} reads completed in {timeout}s")
            time.sleep(0.01)
