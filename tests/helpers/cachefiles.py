"""The cachefiles simulator (`python -m nydus_hybrid.sim.cachefiles`, docs/fscache-simulator.md)
as a process for the fscache tests: this kernel has no cachefiles on-demand mode, so the
daemons reach the simulator through NYDUS_HYBRID_CACHEFILES (tests/compat/conftest.py's
`sim` fixture sets it)."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

from nydus_hybrid.mounts import fscache
from tests.helpers.daemons import stop_process
from tests.helpers.managers import wait_until


class Simulator:
    def __init__(self, base: Path) -> None:
        self.sock = base / "cf.sock"
        self.log = open(base / "sim.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nydus_hybrid.sim.cachefiles", "--socket", str(self.sock)],
            stdout=self.log,
            stderr=self.log,
        )
        wait_until(lambda: os.path.exists(str(self.sock) + ".ctl"))

    def status(self) -> Dict[str, Any]:
        return fscache.sim_request(str(self.sock), {"op": "status"})

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


DIO_BLOCK = 4096


def write_object(fd: int, data: bytes, off: int) -> None:
    """Write through an anon fd as the kernel requires: the cache file is written with direct
    I/O, so from a page-aligned buffer, at an aligned offset, the tail zero-padded."""
    assert off % DIO_BLOCK == 0, off
    size = -(-max(len(data), 1) // DIO_BLOCK) * DIO_BLOCK
    with mmap.mmap(-1, size) as buf:  # anonymous mappings are page-aligned and zeroed
        buf[: len(data)] = data
        os.pwrite(fd, memoryview(buf), off)
