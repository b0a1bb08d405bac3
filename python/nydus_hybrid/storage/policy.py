"""Disk types, RAID profiles and the policy that groups disks into pools."""

from __future__ import annotations

import dataclasses
import enum

from nydus_hybrid.storage.errors import InvalidDeviceType, StorageError


class DiskType(str, enum.Enum):
    SSD = "ssd"
    HDD = "hdd"

    @classmethod
    def parse(cls, value: object) -> DiskType:
        """A ``DiskType`` from itself or its name, else ``InvalidDeviceType``."""
        if isinstance(value, DiskType):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise InvalidDeviceType(f"unknown disk type {value!r} (ssd or hdd)") from None


class RaidProfile(str, enum.Enum):
    # zos also knows raid0; its policy validation refuses it, and so does ours
    SINGLE = "single"
    RAID0 = "raid0"
    RAID1 = "raid1"
    RAID10 = "raid10"

    @property
    def copies(self) -> int:
        """How many times each byte is stored: raw size / usable size."""
        return 2 if self in (RaidProfile.RAID1, RaidProfile.RAID10) else 1


@dataclasses.dataclass(frozen=True)
class StoragePolicy:
    """Pools are made of ``disks_per_pool`` disks of one type with the ``raid`` profile; at
    most ``max_pools`` pools per disk type (0: no limit), the other disks stay spares."""

    raid: RaidProfile = RaidProfile.SINGLE
    disks_per_pool: int = 1
    max_pools: int = 0

    def __post_init__(self) -> None:
        given: object = self.raid  # a string from a config file is accepted too
        try:
            raid = RaidProfile(given.value if isinstance(given, RaidProfile) else str(given).lower())
        except ValueError:
            raise StorageError(f"unknown raid profile {given!r}") from None
        object.__setattr__(self, "raid", raid)
        n = self.disks_per_pool
        if raid is RaidProfile.SINGLE:
            ok = n >= 1
        elif raid is RaidProfile.RAID1:
            ok = n >= 2
        elif raid is RaidProfile.RAID10:
            ok = n >= 4 and n % 2 == 0  # striped mirrors: pairs of disks
        else:
            raise StorageError(f"raid profile {raid.value} is not supported (single, raid1 or raid10)")
        if not ok:
            raise StorageError(f"raid profile {raid.value} cannot be made of {n} disk(s) per pool")
        if self.max_pools < 0:
            raise StorageError(f"max_pools must be 0 (no limit) or more, not {self.max_pools}")
