"""Disks for the storage module's tests: sparse files over loop devices, and a teardown
that leaves no mount, btrfs device record or loop device behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from nydus_hybrid.mounts import mountinfo, syscall
from nydus_hybrid.storage.module import StorageModule
from nydus_hybrid.storage.policy import StoragePolicy

GiB = 1 << 30


def _run(*args: str) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise OSError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p.stdout.strip()


class LoopDisks:
    """Loop devices over sparse files in ``directory``; ``cleanup`` undoes everything,
    including mounts left under ``mount_root``."""

    def __init__(self, directory: str, mount_root: Optional[str] = None) -> None:
        self.directory = directory
        self.mount_root = mount_root or directory
        self.devices: List[str] = []
        self._count = 0
        os.makedirs(directory, exist_ok=True)

    def make(self, kind: str, size: int = GiB) -> Tuple[str, str]:
        """A new disk: (loop device, kind)."""
        path = os.path.join(self.directory, f"disk{self._count}-{kind}.img")
        self._count += 1
        with open(path, "xb") as f:
            f.truncate(size)
        dev = _run("losetup", "--find", "--show", path)
        self.devices.append(dev)
        return dev, kind

    def adopt(self, device: str) -> None:
        """Clean up a loop device someone else attached (the CLI's ``storage init``)."""
        self.devices.append(device)

    def unmount_all(self) -> None:
        root = mountinfo.mountpoint_path(self.mount_root)
        for mp in mountinfo.mounts_under(root):
            syscall.umount(mp, lazy=True)

    def detach(self, device: str) -> None:
        """Take a disk away: forget its btrfs record and detach the loop device."""
        with contextlib.suppress(OSError):
            _run("btrfs", "device", "scan", "-u", device)
        _run("losetup", "-d", device)
        self.devices.remove(device)

    def cleanup(self) -> None:
        self.unmount_all()
        for dev in list(self.devices):
            with contextlib.suppress(OSError):
                self.detach(dev)
        self.devices.clear()


@contextlib.contextmanager
def storage_module(
    directory: Union[str, Path], ssd: int = 1, hdd: int = 0, size: int = GiB, policy: Optional[StoragePolicy] = None
) -> Iterator[StorageModule]:
    """A ``StorageModule`` rooted at ``<directory>/root`` on ``ssd`` + ``hdd`` new loop
    disks of ``size`` bytes; on exit its mounts and disks are gone."""
    disks = LoopDisks(os.path.join(str(directory), "images"), mount_root=str(directory))
    try:
        config = [disks.make("ssd", size) for _ in range(ssd)] + [disks.make("hdd", size) for _ in range(hdd)]
        yield StorageModule(os.path.join(str(directory), "root"), config, policy)
    finally:
        disks.cleanup()
