"""Kernel EROFS mounts through ``mount(2)`` with a regular file as the source.

Linux 6.12+ mounts EROFS straight from a file (no loop device). ``device=`` options attach
extra blob devices, each also a regular file. Used by the demo, the kernel tests and the cachefiles simulator.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from nydus_hybrid.mounts import syscall

_probe_result: Optional[bool] = None


def erofs_available() -> bool:
    """True when this process can make file-backed EROFS mounts: root, EROFS in the kernel,
    and a kernel new enough (6.12+) to mount a regular file. Probed once with a real mount
    of a tiny image, since older kernels list erofs but refuse files (ENOTBLK)."""
    global _probe_result
    if _probe_result is None:
        _probe_result = _probe()
    return _probe_result


def _probe() -> bool:
    try:
        with open("/proc/filesystems") as f:
            if not any(line.split()[-1] == "erofs" for line in f if line.strip()):
                return False
    except OSError:
        return False
    if os.geteuid() != 0:
        return False
    from nydus_hybrid.builder import build

    with tempfile.TemporaryDirectory(prefix="nydus-erofs-probe-") as tmp:
        src, mnt = os.path.join(tmp, "src"), os.path.join(tmp, "mnt")
        os.mkdir(src)
        os.mkdir(mnt)
        boot = os.path.join(tmp, "probe.boot")
        build(src, boot, os.path.join(tmp, "blobs"), progress=False)
        try:
            mount_erofs(boot, mnt)
        except OSError:
            return False
        umount(mnt)
        return True


def mount_erofs(source: str, target: str, devices: Sequence[str] = ()) -> None:
    """Read-only EROFS from a regular file; each ``devices`` entry is an extra blob device."""
    syscall.mount(source, target, "erofs", syscall.MS_RDONLY, ",".join(f"device={d}" for d in devices))


umount = syscall.umount


@contextmanager
def erofs_mounted(source: str, target: str, devices: Sequence[str] = ()) -> Iterator[str]:
    os.makedirs(target, exist_ok=True)
    mount_erofs(source, target, devices)
    try:
        yield target
    finally:
        umount(target)
