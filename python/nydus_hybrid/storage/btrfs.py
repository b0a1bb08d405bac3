"""A thin wrapper over btrfs-progs (``mkfs.btrfs``, ``btrfs``) and ``blkid``, plus the
kernel's own counters: every call is one command, and a failing command is a
``StorageError`` carrying its stderr on one line. Mounts go through the package's one
``mount(2)`` wrapper and the mount table through its one reader."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

from nydus_hybrid.mounts import mountinfo, syscall
from nydus_hybrid.storage.errors import StorageError
from nydus_hybrid.storage.policy import RaidProfile

TOP_LEVEL = 5  # the id of a btrfs filesystem's own root subvolume
COMMAND_SECS = 120.0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run(*args: str, ok_codes: Tuple[int, ...] = (0,)) -> str:
    """Run a command, its stdout; a failure (or a code outside ``ok_codes``) is a
    ``StorageError`` naming the command."""
    try:
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_SECS)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StorageError(f"{' '.join(args)}: {e}") from None
    if p.returncode not in ok_codes:
        reason = _one_line(p.stderr) or _one_line(p.stdout) or f"exit status {p.returncode}"
        raise StorageError(f"{' '.join(args)}: {reason}")
    return p.stdout


# -- devices -------------------------------------------------------------------------------


def probe(device: str) -> Dict[str, str]:
    """What ``blkid`` finds on ``device`` (``TYPE``, ``LABEL``, ``UUID``...), read from the
    device itself rather than blkid's cache; {} for a device without a filesystem."""
    out = run("blkid", "-p", "-o", "export", device, ok_codes=(0, 2))  # 2: nothing found
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


def device_size(device: str) -> int:
    """The size of a block device (or file) in bytes."""
    try:
        fd = os.open(device, os.O_RDONLY)
    except OSError as e:
        raise StorageError(f"{device}: {e.strerror}") from None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def mkfs(devices: Sequence[str], label: str, profile: RaidProfile) -> None:
    """A new btrfs over ``devices``: data and metadata both with ``profile``."""
    run("mkfs.btrfs", "-q", "-f", "-L", label, "-d", profile.value, "-m", profile.value, *devices)


def forget(device: str) -> None:
    """Drop the kernel's record of an unmounted btrfs device, so a reused device path is
    not taken for the old filesystem's member."""
    run("btrfs", "device", "scan", "-u", device)


# -- mounts --------------------------------------------------------------------------------


def is_mounted(mountpoint: str) -> bool:
    return mountinfo.is_mountpoint(mountinfo.mountpoint_path(mountpoint))


def mount(devices: Sequence[str], mountpoint: str) -> None:
    """Mount the btrfs of ``devices``; naming every member spares a ``btrfs device scan``."""
    os.makedirs(mountpoint, exist_ok=True)
    options = ",".join(f"device={d}" for d in devices)
    try:
        syscall.mount(devices[0], mountpoint, "btrfs", 0, options)
    except OSError as e:
        raise StorageError(str(e)) from None


def umount(mountpoint: str) -> None:
    try:
        syscall.umount(mountpoint)
    except OSError as e:
        raise StorageError(str(e)) from None


def usage(mountpoint: str) -> Tuple[int, int]:
    """(size, used) of a mounted filesystem in bytes; btrfs's statfs already divides by
    the profile's copies."""
    try:
        s = os.statvfs(mountpoint)
    except OSError as e:
        raise StorageError(f"statvfs {mountpoint}: {e.strerror}") from None
    return s.f_blocks * s.f_frsize, (s.f_blocks - s.f_bfree) * s.f_frsize


def sync(mountpoint: str) -> None:
    """Commit the transaction, so quota numbers count every write so far."""
    run("btrfs", "filesystem", "sync", mountpoint)


# -- subvolumes and quotas -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Subvolume:
    id: int
    name: str


@dataclasses.dataclass(frozen=True)
class Qgroup:
    id: int  # the subvolume id of level-0 qgroup 0/<id>
    referenced: int
    exclusive: int
    max_referenced: Optional[int]  # None: no limit


def quota_enable(mountpoint: str) -> None:
    run("btrfs", "quota", "enable", mountpoint)


def subvolume_create(path: str) -> None:
    run("btrfs", "subvolume", "create", path)


def subvolume_delete(path: str) -> None:
    run("btrfs", "subvolume", "delete", path)


def parse_subvolume_list(text: str) -> List[Subvolume]:
    """The direct children of the top level in ``btrfs subvolume list`` output
    (``ID 256 gen 9 top level 5 path v1``); nested subvolumes are their owners' business."""
    found = []
    for line in text.splitlines():
        head, sep, path = line.partition(" path ")
        words = head.split()
        if not sep or len(words) < 7 or words[0] != "ID" or words[4:6] != ["top", "level"]:
            continue
        if int(words[6]) == TOP_LEVEL and "/" not in path:
            found.append(Subvolume(int(words[1]), path))
    return found


def subvolume_list(mountpoint: str) -> List[Subvolume]:
    return parse_subvolume_list(run("btrfs", "subvolume", "list", mountpoint))


def qgroup_limit(path: str, size: Optional[int]) -> None:
    """Limit the referenced bytes of the subvolume at ``path`` (None: no limit)."""
    run("btrfs", "qgroup", "limit", "none" if size is None else str(size), path)


def _bytes(field: str) -> Optional[int]:
    return None if field == "none" else int(field)


def parse_qgroup_show(text: str) -> Dict[int, Qgroup]:
    """The level-0 qgroups of ``btrfs qgroup show -re --raw`` output by subvolume id. The
    columns are id, referenced, exclusive, max referenced, max exclusive, and in newer
    btrfs-progs a path; header and ruler lines are skipped."""
    found = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 5 or not words[0].startswith("0/"):
            continue
        try:
            qid = int(words[0][2:])
            found[qid] = Qgroup(qid, int(words[1]), int(words[2]), _bytes(words[3]))
        except ValueError:
            raise StorageError(f"btrfs qgroup show: unexpected line {line.strip()!r}") from None
    return found


def qgroup_show(mountpoint: str) -> Dict[int, Qgroup]:
    return parse_qgroup_show(run("btrfs", "qgroup", "show", "-re", "--raw", mountpoint))


# -- counters ------------------------------------------------------------------------------


def parse_block_stat(text: str) -> Dict[str, int]:
    """``/sys/class/block/<dev>/stat`` (Documentation/block/stat.rst): I/Os, sectors (of
    512 bytes) and milliseconds, read and write."""
    v = [int(x) for x in text.split()]
    if len(v) < 8:
        raise StorageError(f"block stat: expected at least 8 fields, got {text.strip()!r}")
    return {
        "read_ios": v[0],
        "read_bytes": v[2] * 512,
        "read_ms": v[3],
        "write_ios": v[4],
        "write_bytes": v[6] * 512,
        "write_ms": v[7],
    }


def io_counters(device: str) -> Dict[str, int]:
    """The kernel's I/O counters of a block device."""
    name = os.path.basename(os.path.realpath(device))
    try:
        with open(f"/sys/class/block/{name}/stat") as f:
            return parse_block_stat(f.read())
    except OSError as e:
        raise StorageError(f"{device}: no I/O counters: {e.strerror}") from None


def parse_device_stats(text: str) -> Dict[str, Dict[str, int]]:
    """``btrfs device stats`` output (``[/dev/loop0].write_io_errs 0``) by device."""
    found: Dict[str, Dict[str, int]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) != 2 or not words[0].startswith("[") or "]." not in words[0]:
            continue
        dev, _, counter = words[0][1:].partition("].")
        found.setdefault(dev, {})[counter] = int(words[1])
    return found


def device_stats(mountpoint: str) -> Dict[str, Dict[str, int]]:
    """The error counters btrfs keeps per member device of a mounted filesystem."""
    return parse_device_stats(run("btrfs", "device", "stats", mountpoint))
