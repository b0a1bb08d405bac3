"""The storage module's pure parts: policy and name validation, and the parsers of
btrfs-progs' and the kernel's output."""

from __future__ import annotations

import pytest

from nydus_hybrid.storage import btrfs
from nydus_hybrid.storage.cli import parse_size
from nydus_hybrid.storage.errors import InvalidDeviceType, InvalidName, InvalidSize, NotEnoughSpace, StorageError
from nydus_hybrid.storage.names import check_name, check_size
from nydus_hybrid.storage.policy import DiskType, RaidProfile, StoragePolicy
from nydus_hybrid.storage.pools import label_profile, new_label


@pytest.mark.parametrize(
    "raid,disks",
    [("single", 1), ("single", 3), ("raid1", 2), ("raid1", 3), ("raid10", 4), ("raid10", 6)],
)
def test_valid_policies(raid, disks):
    p = StoragePolicy(raid=raid, disks_per_pool=disks)
    assert p.raid is RaidProfile(raid) and p.disks_per_pool == disks


@pytest.mark.parametrize(
    "raid,disks,max_pools",
    [
        ("single", 0, 0),
        ("raid1", 1, 0),
        ("raid10", 2, 0),
        ("raid10", 5, 0),
        ("raid0", 2, 0),  # zos knows it, its validation refuses it
        ("raid5", 3, 0),
        ("single", 1, -1),
    ],
)
def test_invalid_policies(raid, disks, max_pools):
    with pytest.raises(StorageError):
        StoragePolicy(raid=raid, disks_per_pool=disks, max_pools=max_pools)


def test_copies_and_labels():
    assert RaidProfile.RAID1.copies == RaidProfile.RAID10.copies == 2 and RaidProfile.SINGLE.copies == 1
    label = new_label(RaidProfile.RAID10)
    assert label.startswith("nhs-raid10-") and label_profile(label) is RaidProfile.RAID10
    assert label != new_label(RaidProfile.RAID10)


def test_disk_types():
    assert DiskType.parse("SSD") is DiskType.SSD and DiskType.parse(DiskType.HDD) is DiskType.HDD
    with pytest.raises(InvalidDeviceType):
        DiskType.parse("nvme")
    assert NotEnoughSpace("hdd").disk_type == "hdd"


@pytest.mark.parametrize("name", ["a", "vol-1", "with space", "é" * 127, "x" * 255, "zd"])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "a\0b", "x" * 256, "é" * 128, "zdb", "zdb-ns"])
def test_bad_names(name):
    with pytest.raises(InvalidName):
        check_name(name)


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "1"])
def test_bad_sizes(size):
    with pytest.raises(InvalidSize):
        check_size(size)


NEW_QGROUPS = """\
Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path
--------    ----------    ---------  --------------  -------------   ----
0/5              16384        16384            none           none   <toplevel>
0/256         10469376     10469376        10485760           none   v1
0/257                0            0            none           none   v 2
1/100            16384        16384            none           none   <0 member qgroups>
"""

OLD_QGROUPS = """\
qgroupid         rfer         excl     max_rfer     max_excl
--------         ----         ----     --------     --------
0/5             16384        16384         none         none
0/258           32768        16384      1048576         none
"""


def test_qgroup_show_parsing():
    q = btrfs.parse_qgroup_show(NEW_QGROUPS)
    assert sorted(q) == [5, 256, 257]
    assert q[256] == btrfs.Qgroup(256, 10469376, 10469376, 10485760)
    assert q[257].max_referenced is None and q[5].referenced == 16384
    old = btrfs.parse_qgroup_show(OLD_QGROUPS)
    assert old[258] == btrfs.Qgroup(258, 32768, 16384, 1048576)
    with pytest.raises(StorageError):
        btrfs.parse_qgroup_show("0/300  12  x  none  none\n")


def test_subvolume_list_parsing():
    text = (
        "ID 256 gen 9 top level 5 path v1\n"
        "ID 257 gen 10 top level 256 path v1/nested\n"
        "ID 258 gen 11 top level 5 path with path in it\n"
    )
    assert btrfs.parse_subvolume_list(text) == [btrfs.Subvolume(256, "v1"), btrfs.Subvolume(258, "with path in it")]
    assert btrfs.parse_subvolume_list("") == []


def test_counter_parsing():
    stat = "     117        0     4872        3      104     1178    31648       55        0       32       78\n"
    c = btrfs.parse_block_stat(stat)
    assert c == {
        "read_ios": 117,
        "read_bytes": 4872 * 512,
        "read_ms": 3,
        "write_ios": 104,
        "write_bytes": 31648 * 512,
        "write_ms": 55,
    }
    with pytest.raises(StorageError):
        btrfs.parse_block_stat("1 2 3")
    stats = "[/dev/loop0].write_io_errs    0\n[/dev/loop0].read_io_errs     2\n[/dev/loop1].corruption_errs  1\n"
    assert btrfs.parse_device_stats(stats) == {
        "/dev/loop0": {"write_io_errs": 0, "read_io_errs": 2},
        "/dev/loop1": {"corruption_errs": 1},
    }


@pytest.mark.parametrize(
    "text,size", [("512", 512), ("16M", 16 << 20), ("1G", 1 << 30), ("2GiB", 2 << 30), ("4k", 4096)]
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "-1M", "M", "1.5G", "1X", ""])
def test_parse_bad_size(text):
    with pytest.raises(ValueError):
        parse_size(text)
