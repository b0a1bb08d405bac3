"""Kernel EROFS mounts through ``mount(2)`` with a regular file as the source.

Linux 6.12+ mounts EROFS straight from a file (no loop device). ``device=`` options attach
extra blob devices, each also a regular file. Used by the demo and the kernel tests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from contextlib import contextmanager
from typing import Iterator, Sequence

MS_RDONLY = 1
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def erofs_available() -> bool:
    """True when this process can make EROFS mounts (root, and erofs in the kernel)."""
    try:
        with open("/proc/filesystems") as f:
            has_erofs = any(line.split()[-1] == "erofs" for line in f if line.strip())
    except OSError:
        return False
    return has_erofs and os.geteuid() == 0


def mount_erofs(source: str, target: str, devices: Sequence[str] = ()) -> None:
    opts = ",".join(f"device={d}" for d in devices).encode()
    rc = _libc.mount(os.fsencode(source), os.fsencode(target), b"erofs", MS_RDONLY, opts or None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t erofs {source} {target}: {os.strerror(err)}")


def umount(target: str, lazy: bool = False) -> None:
    if _libc.umount2(os.fsencode(target), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


@contextmanager
def erofs_mounted(source: str, target: str, devices: Sequence[str] = ()) -> Iterator[str]:
    os.makedirs(target, exist_ok=True)
    mount_erofs(source, target, devices)
    try:
        yield target
    finally:
        umount(target)
