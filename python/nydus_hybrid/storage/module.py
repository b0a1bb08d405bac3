"""The storage module (zos's ``StorageModule``): volumes, btrfs subvolumes with a qgroup
limit, in pools made on the node's disks per a ``StoragePolicy``.

Under ``root`` each pool is mounted at ``<root>/<label>`` while it holds volumes (a pool
emptied by ``release_filesystem`` is unmounted: spun down) and ``<root>/.lock`` serialises
changes between processes. Every call reads the state back from the disks and the mount
table, so a new ``StorageModule`` over the same disks carries on where the last one left
off. A disk that is missing or unreadable is reported by ``broken_devices``, a pool that
fails to mount by ``broken_pools``; the other pools keep working.

Choices where zos leaves room:

- ``create_filesystem`` of an existing name returns the existing volume, unchanged, when
  it is on the asked disk type, and raises ``AlreadyExists`` otherwise.
- ``update_filesystem`` refuses (``InvalidSize``) to shrink a volume below what it uses,
  and growing it must fit its pool (``NotEnoughSpace``).
- The special volumes ``zos-cache`` (``get_cache_fs``) and ``vdisks`` (the vdisk module's)
  are not listed, and the volume calls refuse their names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from nydus_hybrid.storage import btrfs
from nydus_hybrid.storage.errors import AlreadyExists, InvalidName, InvalidSize, NotEnoughSpace, NotFound, StorageError
from nydus_hybrid.storage.names import check_name, check_size
from nydus_hybrid.storage.policy import DiskType, StoragePolicy
from nydus_hybrid.storage.pools import CACHE, SPECIAL, Pool, Volume, create_pools, scan

MiB = 1 << 20
DEFAULT_CACHE_SIZE = 100 * MiB


@dataclasses.dataclass(frozen=True)
class Usage:
    size: int  # the volume's limit in bytes
    used: int  # bytes it references


@dataclasses.dataclass(frozen=True)
class Filesystem:
    id: int  # the subvolume id
    path: str
    usage: Usage
    name: str
    fs_type: str = "btrfs"
    disk_type: DiskType = DiskType.SSD
    pool: str = ""  # the label of the pool it lives in


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """One pool in one ``monitor`` snapshot."""

    label: str
    disk_type: DiskType
    mounted: bool
    size: int
    used: int
    reserved: int
    io: Dict[str, Dict[str, int]]  # per device: the kernel's I/O counters
    errors: Dict[str, Dict[str, int]]  # per device: btrfs's error counters (mounted pools)


def _user_name(name: str) -> str:
    check_name(name)
    if name in SPECIAL:
        raise InvalidName(f"name {name!r}: reserved for the module's own volume")
    return name


class StorageModule:
    def __init__(
        self,
        root: str,
        disks: Sequence[Tuple[str, Union[DiskType, str]]],
        policy: Optional[StoragePolicy] = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.root = os.path.abspath(root)
        self.disks = [(path, DiskType.parse(kind)) for path, kind in disks]
        self.policy = policy or StoragePolicy()
        self.cache_size = check_size(cache_size)
        # runtime findings only (what failed to mount or format), never state
        self._pool_errors: Dict[str, str] = {}
        self._device_errors: Dict[str, str] = {}
        os.makedirs(self.root, exist_ok=True)
        with self.locked():
            self._initialize()

    # -- state -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the module's lock (between processes too) for a change."""
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _initialize(self) -> None:
        """Make pools on free disks, mount the pools that hold volumes and leave the empty
        ones idle; a pool that fails to mount is recorded as broken."""
        found = scan(self.root, self.disks)
        _, failed = create_pools(self.root, found, self.policy)
        self._device_errors.update(failed)
        for pool in self.pools():
            if pool.mounted:
                continue
            if not self._try_mount(pool):
                continue
            try:
                empty = not pool.volumes()
            except StorageError as e:
                self._pool_errors[pool.label] = str(e)
                continue
            if empty:
                pool.unmount()

    def pools(self) -> List[Pool]:
        """Every pool the configured disks hold now."""
        return scan(self.root, self.disks).pools

    def _try_mount(self, pool: Pool) -> bool:
        try:
            pool.mount()
        except StorageError as e:
            self._pool_errors[pool.label] = str(e)
            return False
        self._pool_errors.pop(pool.label, None)
        return True

    def _filesystem(self, pool: Pool, vol: Volume) -> Filesystem:
        return Filesystem(
            id=vol.id,
            path=os.path.join(pool.mountpoint, vol.name),
            usage=Usage(vol.size, vol.used),
            name=vol.name,
            disk_type=pool.disk_type,
            pool=pool.label,
        )

    def _volumes(self, sync: bool = False) -> Iterator[Tuple[Pool, Volume]]:
        for pool in self.pools():
            if pool.mounted:
                for vol in pool.volumes(sync=sync):
                    yield pool, vol

    def _find(self, name: str, sync: bool = False) -> Optional[Tuple[Pool, Volume]]:
        for pool, vol in self._volumes(sync=sync):
            if vol.name == name:
                return pool, vol
        return None

    def find_volume(self, name: str) -> Optional[Filesystem]:
        """The volume ``name`` (special ones included), or None."""
        found = self._find(name, sync=True)
        return self._filesystem(*found) if found else None

    def pool_free(self, label: str) -> int:
        """Bytes of pool ``label`` not yet promised to a volume."""
        for pool in self.pools():
            if pool.label == label:
                return pool.size() - pool.reserved() if pool.mounted else pool.size()
        raise NotFound(f"no pool {label}")

    # -- placement -------------------------------------------------------------------------

    def _place(self, size: int, disk_type: DiskType) -> Pool:
        """zos's rule: the mounted pool with the most unpromised room that fits, else the
        first idle pool that fits once mounted."""
        pools = [p for p in self.pools() if p.disk_type is disk_type]
        best: Optional[Tuple[int, Pool]] = None
        for p in pools:
            if p.mounted:
                free = p.size() - p.reserved()
                if size <= free and (best is None or free > best[0]):
                    best = (free, p)
        if best is not None:
            return best[1]
        for p in pools:
            if p.mounted or not self._try_mount(p):
                continue
            if p.reserved() + size <= p.size():
                return p
            if not p.volumes():
                p.unmount()  # not needed after all: spin it down again
        raise NotEnoughSpace(disk_type.value, f"no {disk_type.value} pool has {size} bytes free")

    def create_special(self, name: str, size: int, disk_type: DiskType, limit: bool = True) -> Filesystem:
        """Create a volume without the name checks (the module's own volumes); ``limit``
        False places it by ``size`` but sets no qgroup limit. Call with the lock held."""
        pool = self._place(size, disk_type)
        path = os.path.join(pool.mountpoint, name)
        btrfs.subvolume_create(path)
        try:
            if limit:
                btrfs.qgroup_limit(path, size)
        except StorageError:
            btrfs.subvolume_delete(path)  # nothing half-made
            raise
        found = self._find(name)
        if found is None:
            raise StorageError(f"{name}: created in {pool.label} but not found there")
        return self._filesystem(*found)

    # -- zos's VolumeAllocater -------------------------------------------------------------

    def create_filesystem(self, name: str, size: int, disk_type: Union[DiskType, str]) -> Filesystem:
        kind = DiskType.parse(disk_type)
        _user_name(name)
        check_size(size)
        with self.locked():
            found = self._find(name, sync=True)
            if found is not None:
                if found[0].disk_type is not kind:
                    raise AlreadyExists(f"volume {name} exists on {found[0].disk_type.value}, not {kind.value}")
                return self._filesystem(*found)
            return self.create_special(name, size, kind)

    def release_filesystem(self, name: str) -> None:
        _user_name(name)
        with self.locked():
            found = self._find(name)
            if found is None:
                raise NotFound(f"no volume {name}")
            pool, _ = found
            btrfs.subvolume_delete(os.path.join(pool.mountpoint, name))
            if not pool.volumes():
                pool.unmount()  # an empty pool is spun down

    def list_filesystems(self) -> List[Filesystem]:
        return [self._filesystem(p, v) for p, v in self._volumes(sync=True) if v.name not in SPECIAL]

    def path(self, name: str) -> Filesystem:
        _user_name(name)
        found = self._find(name, sync=True)
        if found is None:
            raise NotFound(f"no volume {name}")
        return self._filesystem(*found)

    def update_filesystem(self, name: str, size: int) -> Filesystem:
        _user_name(name)
        check_size(size)
        with self.locked():
            found = self._find(name, sync=True)
            if found is None:
                raise NotFound(f"no volume {name}")
            pool, vol = found
            if size < vol.used:
                raise InvalidSize(f"volume {name} uses {vol.used} bytes: cannot shrink it to {size}")
            if pool.reserved() - vol.size + size > pool.size():
                raise NotEnoughSpace(pool.disk_type.value, f"pool {pool.label} has no room to grow {name} to {size}")
            btrfs.qgroup_limit(os.path.join(pool.mountpoint, name), size)
            return self.path(name)

    def get_cache_fs(self) -> Filesystem:
        """The node's cache volume, made on first use: on an ssd pool, else an hdd one."""
        with self.locked():
            found = self._find(CACHE, sync=True)
            if found is not None:
                return self._filesystem(*found)
            try:
                return self.create_special(CACHE, self.cache_size, DiskType.SSD)
            except NotEnoughSpace:
                return self.create_special(CACHE, self.cache_size, DiskType.HDD)

    # -- zos's StorageModule ---------------------------------------------------------------

    def total(self, disk_type: Union[DiskType, str]) -> int:
        """The usable bytes of every pool of ``disk_type``, mounted or idle."""
        kind = DiskType.parse(disk_type)
        return sum(p.size() for p in self.pools() if p.disk_type is kind and p.label not in self._pool_errors)

    def broken_pools(self) -> List[Tuple[str, str]]:
        """(label, error) of the pools that failed to mount and are still not mounted."""
        mounted = {p.label for p in self.pools() if p.mounted}
        return sorted((label, err) for label, err in self._pool_errors.items() if label not in mounted)

    def broken_devices(self) -> List[Tuple[str, str]]:
        """(path, error) of the configured disks that are missing, unreadable, hold a
        foreign filesystem, or could not be formatted."""
        found = dict(scan(self.root, self.disks).broken)
        for path, err in self._device_errors.items():
            found.setdefault(path, err)
        return sorted(found.items())

    def snapshot(self) -> List[PoolStats]:
        """Usage and counters of every pool now."""
        stats = []
        for p in self.pools():
            mounted = p.mounted
            io = {}
            for dev in p.devices:
                with contextlib.suppress(StorageError):
                    io[dev] = btrfs.io_counters(dev)
            errors = btrfs.device_stats(p.mountpoint) if mounted else {}
            stats.append(
                PoolStats(
                    label=p.label,
                    disk_type=p.disk_type,
                    mounted=mounted,
                    size=p.size(),
                    used=p.used(),
                    reserved=p.reserved() if mounted else 0,
                    io=io,
                    errors=errors,
                )
            )
        return stats

    def monitor(self, interval: float = 5.0) -> Iterator[List[PoolStats]]:
        """A snapshot now and then one every ``interval`` seconds, for as long as the caller
        iterates."""
        while True:
            yield self.snapshot()
            time.sleep(interval)
