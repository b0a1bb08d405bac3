"""The one wrapper of ``mount(2)`` and ``umount2(2)``: every kernel mount of the package goes
through here, so errors read the same everywhere (an ``OSError`` naming the call)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

MS_RDONLY = 1
MS_NOATIME = 1024
MS_BIND = 4096
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount(source: str, target: str, fstype: str, flags: int = 0, options: str = "") -> None:
    """``mount -t <fstype> [-o <options>] <source> <target>``."""
    data: Optional[bytes] = options.encode() if options else None
    if _libc.mount(os.fsencode(source), os.fsencode(target), fstype.encode(), flags, data) != 0:
        err = ctypes.get_errno()
        opts = f" -o {options}" if options else ""
        raise OSError(err, f"mount -t {fstype}{opts} {source} {target}: {os.strerror(err)}")


def umount(target: str, lazy: bool = False) -> None:
    """``umount [-l] <target>``."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")
