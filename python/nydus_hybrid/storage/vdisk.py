"""Virtual disks (zos's ``VDiskModule``): sparse files in the ``vdisks`` volume of an ssd
pool. A vdisk's size is its file's size and counts as reserved in its pool, so the pool
never promises more than it has; the list is the directory's content."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import List

from nydus_hybrid.storage.errors import AlreadyExists, NotEnoughSpace, NotFound, StorageError
from nydus_hybrid.storage.module import StorageModule
from nydus_hybrid.storage.names import check_name, check_size
from nydus_hybrid.storage.policy import DiskType
from nydus_hybrid.storage.pools import VDISKS


@dataclasses.dataclass(frozen=True)
class VDisk:
    path: str
    size: int


class VDiskModule:
    def __init__(self, storage: StorageModule) -> None:
        self.storage = storage

    def _dir(self) -> str:
        fs = self.storage.find_volume(VDISKS)
        if fs is None:
            raise NotFound("no vdisks volume yet")
        return fs.path

    def _path(self, id: str) -> str:
        return os.path.join(self._dir(), check_name(id))

    def allocate(self, id: str, size: int) -> str:
        check_name(id)
        check_size(size)
        with self.storage.locked():
            fs = self.storage.find_volume(VDISKS)
            if fs is None:
                # no limit on the volume: its files' sizes are what it reserves
                fs = self.storage.create_special(VDISKS, size, DiskType.SSD, limit=False)
            path = os.path.join(fs.path, id)
            if os.path.exists(path):
                raise AlreadyExists(f"vdisk {id} exists")
            if size > self.storage.pool_free(fs.pool):
                raise NotEnoughSpace(DiskType.SSD.value, f"pool {fs.pool} has no {size} bytes free for vdisk {id}")
            try:
                with open(path, "xb") as f:
                    f.truncate(size)  # sparse: blocks are used only when written
            except OSError as e:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                raise StorageError(f"vdisk {id}: {e.strerror}") from None
            return path

    def deallocate(self, id: str) -> None:
        check_name(id)
        with self.storage.locked():
            try:
                os.unlink(self._path(id))
            except FileNotFoundError:
                raise NotFound(f"no vdisk {id}") from None

    def exists(self, id: str) -> bool:
        check_name(id)
        try:
            return os.path.isfile(self._path(id))
        except NotFound:
            return False

    def inspect(self, id: str) -> VDisk:
        check_name(id)
        try:
            path = self._path(id)
            return VDisk(path, os.stat(path).st_size)
        except (NotFound, FileNotFoundError):
            raise NotFound(f"no vdisk {id}") from None

    def list(self) -> List[VDisk]:
        try:
            directory = self._dir()
        except NotFound:
            return []
        return [self.inspect(n) for n in sorted(os.listdir(directory)) if os.path.isfile(os.path.join(directory, n))]
