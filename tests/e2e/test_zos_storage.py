"""The zos-style storage module on real btrfs pools over loop devices: volumes with quotas,
placement, broken disks, a restart, vdisks and bad input."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from nydus_hybrid.storage.errors import (
    AlreadyExists,
    InvalidDeviceType,
    InvalidName,
    InvalidSize,
    NotEnoughSpace,
    NotFound,
)
from nydus_hybrid.storage.module import StorageModule
from nydus_hybrid.storage.policy import DiskType, RaidProfile, StoragePolicy
from nydus_hybrid.storage.vdisk import VDiskModule
from tests.helpers.storage_disks import LoopDisks, storage_module

MiB = 1 << 20


@pytest.fixture
def disks(tmp_path):
    d = LoopDisks(str(tmp_path / "disks"), mount_root=str(tmp_path))
    yield d
    d.cleanup()


def _write(path, size):
    with open(path, "wb") as f:
        chunk = b"x" * MiB
        for _ in range(size // MiB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def test_volume_lifecycle_and_quota(tmp_path, disks):
    mod = StorageModule(str(tmp_path / "root"), [disks.make("ssd"), disks.make("hdd")])
    fs = mod.create_filesystem("data", 8 * MiB, DiskType.SSD)
    assert fs.name == "data" and fs.usage.size == 8 * MiB and fs.disk_type is DiskType.SSD
    assert fs.fs_type == "btrfs" and os.path.isdir(fs.path)
    assert mod.create_filesystem("data", 8 * MiB, "ssd").path == fs.path  # the existing one
    with pytest.raises(AlreadyExists):
        mod.create_filesystem("data", 8 * MiB, "hdd")
    assert [f.name for f in mod.list_filesystems()] == ["data"]
    assert mod.path("data").id == fs.id

    with pytest.raises(OSError) as e:
        _write(os.path.join(fs.path, "big"), 16 * MiB)
    assert e.value.errno in (errno.EDQUOT, errno.ENOSPC)
    os.unlink(os.path.join(fs.path, "big"))

    grown = mod.update_filesystem("data", 64 * MiB)
    assert grown.usage.size == 64 * MiB
    _write(os.path.join(fs.path, "big"), 16 * MiB)
    assert mod.path("data").usage.used >= 16 * MiB
    with pytest.raises(InvalidSize):
        mod.update_filesystem("data", 4 * MiB)  # below what it uses
    assert mod.path("data").usage.size == 64 * MiB

    mod.release_filesystem("data")
    assert mod.list_filesystems() == [] and not os.path.exists(fs.path)
    with pytest.raises(NotFound):
        mod.path("data")


def test_not_enough_space_and_invalid_type(tmp_path, disks):
    mod = StorageModule(str(tmp_path / "root"), [disks.make("ssd"), disks.make("hdd")])
    ssd_total = mod.total("ssd")
    assert ssd_total > 900 * MiB and mod.total(DiskType.HDD) > 900 * MiB
    mod.create_filesystem("a", ssd_total - 100 * MiB, "ssd")
    with pytest.raises(NotEnoughSpace) as e:
        mod.create_filesystem("b", 200 * MiB, "ssd")
    assert e.value.disk_type == "ssd"
    assert mod.create_filesystem("b", 200 * MiB, "hdd").disk_type is DiskType.HDD
    with pytest.raises(InvalidDeviceType):
        mod.create_filesystem("c", MiB, "nvme")
    with pytest.raises(InvalidDeviceType):
        mod.total("tape")
    assert sorted(f.name for f in mod.list_filesystems()) == ["a", "b"]


def test_placement_most_free_first(tmp_path, disks):
    mod = StorageModule(str(tmp_path / "root"), [disks.make("ssd"), disks.make("ssd")])
    a = mod.create_filesystem("a", 600 * MiB, "ssd")
    b = mod.create_filesystem("b", 500 * MiB, "ssd")  # does not fit next to a
    assert a.pool != b.pool
    # both pools mounted now; b's has more room left, twice
    assert mod.create_filesystem("c", 50 * MiB, "ssd").pool == b.pool
    assert mod.create_filesystem("d", 20 * MiB, "ssd").pool == b.pool
    # emptying a's pool spins it down; it is used again when b's pool cannot fit
    mod.release_filesystem("a")
    assert not os.path.ismount(os.path.join(mod.root, a.pool))
    assert mod.create_filesystem("e", 700 * MiB, "ssd").pool == a.pool


def test_restart_finds_volumes_and_sizes(tmp_path, disks):
    config = [disks.make("ssd"), disks.make("hdd")]
    mod = StorageModule(str(tmp_path / "root"), config)
    mod.create_filesystem("one", 10 * MiB, "ssd")
    mod.create_filesystem("two", 20 * MiB, "hdd")
    mod.update_filesystem("one", 12 * MiB)
    before = {f.name: (f.usage.size, f.disk_type, f.path) for f in mod.list_filesystems()}
    del mod
    again = StorageModule(str(tmp_path / "root"), config)
    after = {f.name: (f.usage.size, f.disk_type, f.path) for f in again.list_filesystems()}
    assert (
        after
        == before
        == {
            "one": (12 * MiB, DiskType.SSD, after["one"][2]),
            "two": (20 * MiB, DiskType.HDD, after["two"][2]),
        }
    )
    # a restart with every pool unmounted (a reboot) mounts them again
    disks.unmount_all()
    rebooted = StorageModule(str(tmp_path / "root"), config)
    assert {f.name: f.usage.size for f in rebooted.list_filesystems()} == {"one": 12 * MiB, "two": 20 * MiB}


def test_removed_disk_is_reported_and_others_work(tmp_path, disks):
    ssd1, ssd2, hdd = disks.make("ssd"), disks.make("ssd"), disks.make("hdd")
    config = [ssd1, ssd2, hdd]
    mod = StorageModule(str(tmp_path / "root"), config)
    assert mod.broken_devices() == [] and mod.broken_pools() == []
    kept = mod.create_filesystem("kept", 10 * MiB, "ssd")
    gone_dev = next(d for d, _ in (ssd1, ssd2) if d not in {p.devices[0] for p in mod.pools() if p.mounted})
    disks.detach(gone_dev)  # its pool is idle: nothing mounted on it
    assert [d for d, _ in mod.broken_devices()] == [gone_dev]
    assert mod.path("kept").path == kept.path
    assert mod.create_filesystem("more", 10 * MiB, "hdd").disk_type is DiskType.HDD
    restarted = StorageModule(str(tmp_path / "root"), config)
    assert [d for d, _ in restarted.broken_devices()] == [gone_dev]
    assert sorted(f.name for f in restarted.list_filesystems()) == ["kept", "more"]


def test_raid1_pool_missing_a_member_is_broken(tmp_path, disks):
    a, b, c, d = disks.make("ssd"), disks.make("ssd"), disks.make("hdd"), disks.make("hdd")
    config = [a, b, c, d]
    policy = StoragePolicy(raid=RaidProfile.RAID1, disks_per_pool=2)
    mod = StorageModule(str(tmp_path / "root"), config, policy)
    assert len(mod.pools()) == 2
    mod.create_filesystem("h", 10 * MiB, "hdd")
    disks.detach(b[0])  # the idle ssd pool loses a mirror
    restarted = StorageModule(str(tmp_path / "root"), config, policy)
    assert [dev for dev, _ in restarted.broken_devices()] == [b[0]]
    broken = restarted.broken_pools()
    assert len(broken) == 1 and broken[0][1]
    with pytest.raises(NotEnoughSpace):
        restarted.create_filesystem("s", MiB, "ssd")
    assert [f.name for f in restarted.list_filesystems()] == ["h"]


def test_vdisks(tmp_path, disks):
    mod = StorageModule(str(tmp_path / "root"), [disks.make("ssd")])
    vd = VDiskModule(mod)
    assert vd.list() == [] and not vd.exists("vm1")
    path = vd.allocate("vm1", 300 * MiB)
    assert os.stat(path).st_size == 300 * MiB and os.stat(path).st_blocks == 0  # sparse
    assert vd.exists("vm1") and vd.inspect("vm1").size == 300 * MiB
    vd.allocate("vm2", 400 * MiB)
    with pytest.raises(NotEnoughSpace):
        vd.allocate("vm3", 400 * MiB)  # reserved by the other two
    with pytest.raises(AlreadyExists):
        vd.allocate("vm1", MiB)
    assert [v.size for v in vd.list()] == [300 * MiB, 400 * MiB]
    assert mod.list_filesystems() == []  # the vdisks volume is not a user volume
    vd.deallocate("vm1")
    assert not vd.exists("vm1") and [os.path.basename(v.path) for v in vd.list()] == ["vm2"]
    with pytest.raises(NotFound):
        vd.inspect("vm1")
    with pytest.raises(InvalidName):
        vd.allocate("../x", MiB)
    cache = mod.get_cache_fs()
    assert cache.name == "zos-cache" and mod.get_cache_fs().path == cache.path


def test_bad_input_leaves_nothing(tmp_path, disks):
    mod = StorageModule(str(tmp_path / "root"), [disks.make("ssd")])
    for name in ("a/b", "..", ".", "", "zdb-x", "x" * 256, "vdisks"):
        with pytest.raises(InvalidName):
            mod.create_filesystem(name, MiB, "ssd")
    for size in (0, -1):
        with pytest.raises(InvalidSize):
            mod.create_filesystem("ok", size, "ssd")
    with pytest.raises(InvalidDeviceType):
        mod.create_filesystem("ok", MiB, "floppy")
    with pytest.raises(NotFound):
        mod.release_filesystem("missing")
    with pytest.raises(NotFound):
        mod.update_filesystem("missing", MiB)
    with pytest.raises(NotEnoughSpace):
        mod.create_filesystem("huge", 1 << 40, "ssd")
    assert mod.list_filesystems() == []
    # nothing mounted either: the pool the huge request tried was spun down again
    assert not any(p.mounted for p in mod.pools())


def _cli(*args):
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", "storage", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli(tmp_path, disks):
    p = _cli("init", "--dir", str(tmp_path / "img"), "--disks", "ssd:1,hdd:1", "--size", "1G", "--json")
    assert p.returncode == 0, p.stderr
    made = json.loads(p.stdout)
    for d in made:
        disks.adopt(d["device"])
    opts = ["--root", str(tmp_path / "root")]
    for d in made:
        opts += ["--disk", f"{d['device']}:{d['type']}"]
    p = _cli("create", *opts, "v1", "--size", "16M", "--type", "hdd", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["usage"]["size"] == 16 * MiB
    p = _cli("update", *opts, "v1", "--size", "32M", "--json")
    assert p.returncode == 0, p.stderr
    p = _cli("list", *opts, "--json")
    assert [(f["name"], f["usage"]["size"], f["disk_type"]) for f in json.loads(p.stdout)] == [("v1", 32 * MiB, "hdd")]
    p = _cli("total", *opts, "--type", "hdd")
    assert p.returncode == 0 and int(p.stdout) > 900 * MiB
    p = _cli("monitor", *opts, "--count", "1", "--interval", "0.1", "--json")
    assert p.returncode == 0, p.stderr
    assert {s["disk_type"] for s in json.loads(p.stdout.splitlines()[0])} == {"ssd", "hdd"}
    p = _cli("broken", *opts, "--json")
    assert json.loads(p.stdout) == {"pools": [], "devices": []}
    p = _cli("release", *opts, "v1")
    assert p.returncode == 0, p.stderr
    p = _cli("release", *opts, "v1")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "v1" in p.stderr
    p = _cli("create", *opts, "v2", "--size", "0", "--type", "ssd")
    assert p.returncode == 2
    p = _cli("create", *opts, "v2", "--size", "1M", "--type", "tape")
    assert p.returncode == 1 and "tape" in p.stderr


def test_storage_module_helper(tmp_path):
    with storage_module(tmp_path / "d", ssd=1, hdd=1, size=1 << 30) as mod:
        fs = mod.create_filesystem("v", MiB, "hdd")
        devices = [dev for p in mod.pools() for dev in p.devices]
        assert len(devices) == 2 and os.path.ismount(os.path.dirname(fs.path))
    assert not os.path.ismount(os.path.dirname(fs.path))
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert not any(f"{dev}:" in attached for dev in devices)


def test_monitor_counts_writes(tmp_path, disks):
    mod = StorageModule(str(tmp_path / "root"), [disks.make("ssd"), disks.make("hdd")])
    fs = mod.create_filesystem("busy", 64 * MiB, "hdd")
    snapshots = mod.monitor(interval=0.1)
    first = {s.label: s for s in next(snapshots)}
    _write(os.path.join(fs.path, "f"), 16 * MiB)
    second = {s.label: s for s in next(snapshots)}
    busy = second[fs.pool]
    assert busy.mounted and busy.reserved == 64 * MiB and busy.disk_type is DiskType.HDD
    (dev,) = busy.io
    assert busy.io[dev]["write_bytes"] - first[fs.pool].io[dev]["write_bytes"] >= 16 * MiB
    assert busy.errors[dev]["write_io_errs"] == 0
    idle = next(s for s in second.values() if s.label != fs.pool)
    assert not idle.mounted and idle.reserved == 0 and idle.size > 900 * MiB
