"""Pools: one btrfs filesystem over one or more disks of a type, made per the policy and
found again from the disks themselves. A pool's label (``nhs-<profile>-<id>``) marks it as
ours and keeps its profile; its disks' configured type is its type; whether it is mounted
is read from the mount table; its volumes are its top-level subvolumes and their sizes
their qgroup limits. Nothing lives only in memory, so a restarted module sees what the
last one left."""

from __future__ import annotations

import dataclasses
import os
import stat
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

from nydus_hybrid.storage import btrfs
from nydus_hybrid.storage.errors import StorageError
from nydus_hybrid.storage.policy import DiskType, RaidProfile, StoragePolicy

LABEL_PREFIX = "nhs-"
VDISKS = "vdisks"  # the subvolume holding the vdisk files
CACHE = "zos-cache"  # the node's cache subvolume
SPECIAL = (VDISKS, CACHE)


@dataclasses.dataclass(frozen=True)
class Volume:
    name: str
    id: int
    size: int  # the qgroup limit (vdisks: the sum of its files' sizes); 0 without a limit
    used: int  # referenced bytes, as of the last committed transaction


@dataclasses.dataclass(frozen=True)
class Pool:
    label: str
    uuid: str
    devices: Tuple[str, ...]
    disk_type: DiskType
    profile: RaidProfile
    mountpoint: str

    @property
    def mounted(self) -> bool:
        return btrfs.is_mounted(self.mountpoint)

    def size(self) -> int:
        """Usable bytes: the filesystem's own count when mounted, else the disks' raw size
        over the profile's copies."""
        if self.mounted:
            return btrfs.usage(self.mountpoint)[0]
        return sum(btrfs.device_size(d) for d in self.devices) // self.profile.copies

    def used(self) -> int:
        return btrfs.usage(self.mountpoint)[1] if self.mounted else 0

    def mount(self) -> None:
        if not self.mounted:
            btrfs.mount(self.devices, self.mountpoint)
            try:
                btrfs.quota_enable(self.mountpoint)  # a no-op once enabled; new pools need it
            except StorageError:
                btrfs.umount(self.mountpoint)
                raise

    def unmount(self) -> None:
        if self.mounted:
            btrfs.umount(self.mountpoint)
        try:
            os.rmdir(self.mountpoint)
        except OSError:
            pass  # something else was left there: keep it

    def volumes(self, sync: bool = False) -> List[Volume]:
        """The volumes of a mounted pool; ``sync`` first commits, so ``used`` is current."""
        if sync:
            btrfs.sync(self.mountpoint)
        qgroups = btrfs.qgroup_show(self.mountpoint)
        found = []
        for sv in btrfs.subvolume_list(self.mountpoint):
            q = qgroups.get(sv.id)
            used = q.referenced if q else 0
            if sv.name == VDISKS:
                size = _files_size(os.path.join(self.mountpoint, VDISKS))
            else:
                size = (q.max_referenced or 0) if q else 0
            found.append(Volume(sv.name, sv.id, size, used))
        return found

    def reserved(self) -> int:
        """The bytes promised to the pool's volumes."""
        return sum(v.size for v in self.volumes())


def _files_size(directory: str) -> int:
    total = 0
    with os.scandir(directory) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                total += e.stat(follow_symlinks=False).st_size
    return total


def new_label(profile: RaidProfile) -> str:
    return f"{LABEL_PREFIX}{profile.value}-{uuid.uuid4().hex[:12]}"


def label_profile(label: str) -> RaidProfile:
    try:
        return RaidProfile(label[len(LABEL_PREFIX) :].split("-")[0])
    except ValueError:
        return RaidProfile.SINGLE


@dataclasses.dataclass
class Scan:
    """What the disks hold right now."""

    pools: List[Pool]
    free: List[Tuple[str, DiskType]]  # disks without any filesystem
    broken: List[Tuple[str, str]]  # (disk, why it cannot be used)


def _check_device(path: str) -> Optional[str]:
    """Why ``path`` is no usable disk, or None."""
    try:
        st = os.stat(path)
    except OSError as e:
        return e.strerror or str(e)
    if not stat.S_ISBLK(st.st_mode):
        return "not a block device"
    try:
        size = btrfs.device_size(path)  # a detached loop device fails here (ENXIO)
    except StorageError as e:
        return str(e)
    return "empty device" if size == 0 else None


def scan(root: str, disks: Sequence[Tuple[str, DiskType]]) -> Scan:
    members: Dict[str, List[Tuple[str, DiskType, str]]] = {}
    free: List[Tuple[str, DiskType]] = []
    broken: List[Tuple[str, str]] = []
    for path, kind in disks:
        why = _check_device(path)
        if why is None:
            try:
                fields = btrfs.probe(path)
            except StorageError as e:
                why = str(e)
            else:
                if not fields.get("TYPE"):
                    free.append((path, kind))
                elif fields["TYPE"] == "btrfs" and fields.get("LABEL", "").startswith(LABEL_PREFIX):
                    members.setdefault(fields["UUID"], []).append((path, kind, fields["LABEL"]))
                else:
                    # another filesystem or partition table: not ours to wipe
                    why = f"holds a {fields['TYPE']} that is not one of our pools"
        if why is not None:
            broken.append((path, why))
    pools = []
    for fs_uuid, devs in members.items():
        label = devs[0][2]
        pools.append(
            Pool(
                label=label,
                uuid=fs_uuid,
                devices=tuple(d for d, _, _ in devs),
                disk_type=devs[0][1],
                profile=label_profile(label),
                mountpoint=os.path.join(root, label),
            )
        )
    pools.sort(key=lambda p: p.label)
    return Scan(pools, free, broken)


def create_pools(root: str, found: Scan, policy: StoragePolicy) -> Tuple[List[Pool], List[Tuple[str, str]]]:
    """New pools on the free disks, ``disks_per_pool`` of one type each, up to
    ``max_pools`` pools per type; the rest stay spares. Returns the new pools and the
    disks mkfs failed on."""
    made: List[Pool] = []
    failed: List[Tuple[str, str]] = []
    for kind in DiskType:
        disks = [d for d, k in found.free if k is kind]
        have = sum(1 for p in found.pools if p.disk_type is kind)
        n = policy.disks_per_pool
        while len(disks) >= n and (policy.max_pools == 0 or have < policy.max_pools):
            group, disks = disks[:n], disks[n:]
            label = new_label(policy.raid)
            try:
                btrfs.mkfs(group, label, policy.raid)
                fs_uuid = btrfs.probe(group[0]).get("UUID", "")
            except StorageError as e:
                failed.extend((d, str(e)) for d in group)
                continue
            made.append(Pool(label, fs_uuid, tuple(group), kind, policy.raid, os.path.join(root, label)))
            have += 1
    return made, failed
