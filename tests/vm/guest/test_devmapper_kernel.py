"""The devmapper snapshotter on the test kernel's real device-mapper thin pool (spec B8), run
in the VM by tests/vm/test_real_kernel.py: `dmsetup`'s tables, errors and status through our
wrapper; thin devices, snapshots and their rollbacks through `PoolDevice`; the snapshotter's
operations with ext4 and xfs; and bad input. Every pool is made fresh on two sparse loop
files and removed after its test."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from nydus_hybrid.devmapper import cli, dmsetup
from nydus_hybrid.devmapper.config import DevmapperConfig, from_dict
from nydus_hybrid.devmapper.dmsetup import DmError
from nydus_hybrid.devmapper.metadata import DeviceState, IdState, PoolMetadata
from nydus_hybrid.devmapper.pool import PoolDevice, PoolError
from nydus_hybrid.devmapper.snapshotter import FSTYPE_LABEL, DevmapperSnapshotter
from nydus_hybrid.mounts import syscall
from nydus_hybrid.snapshotter.errors import FailedPrecondition
from nydus_hybrid.snapshotter.metastore import Kind

MiB = 1 << 20
ROUNDS = int(os.environ.get("NYDUS_DEVMAPPER_CRASH_ROUNDS", "20"))


class Pool:
    def __init__(self, tmp: Path, data: int = 512 * MiB, block: int = 64 << 10) -> None:
        self.name = f"nhtest-{uuid.uuid4().hex[:8]}"
        self.dir = tmp / "pool"
        self.loops = cli.create_pool(self.name, str(self.dir), data, 64 * MiB, block)

    def remove(self) -> None:
        for line in subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{self.name}-"):
                dmsetup.remove(name, force=True)
        cli.remove_pool(self.name, str(self.dir))


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    p = Pool(tmp_path)
    yield p
    p.remove()


@pytest.fixture
def device(tmp_path: Path, pool: Pool) -> Iterator[PoolDevice]:
    d = PoolDevice(pool.name, PoolMetadata(str(tmp_path / "pool.db")))
    yield d
    d.close()


def mounted(source: str, target: Path, fs_type: str, options: str = "") -> None:
    target.mkdir(parents=True, exist_ok=True)
    syscall.mount(source, str(target), fs_type, 0, options)


# -- dmsetup ------------------------------------------------------------------------------


def test_pool_table_and_thin_device_errors(pool: Pool) -> None:
    table = dmsetup.table(pool.name)
    assert table.startswith("0 1048576 thin-pool ") and table.endswith(" 128 32768 1 skip_block_zeroing"), table
    dmsetup.create_thin(pool.name, 1)
    with pytest.raises(DmError) as e:
        dmsetup.create_thin(pool.name, 1)
    assert e.value.errno == errno.EEXIST
    name = f"{pool.name}-t1"
    dmsetup.activate(name, pool.name, 1, 64 * MiB)
    with pytest.raises(DmError) as e:
        dmsetup.activate(name, pool.name, 1, 64 * MiB)
    assert e.value.errno == errno.EBUSY
    s = dmsetup.status(name)
    assert (s.target, s.params) == ("thin", ["0", "-"]), "an unwritten thin device maps nothing"
    with pytest.raises(DmError) as e:
        dmsetup.run("remove", pool.name)  # a pool with an active child
    assert e.value.errno == errno.EBUSY
    for _ in range(2):  # idempotent
        dmsetup.suspend(name)
        assert dmsetup.info(name).suspended
    for _ in range(2):
        dmsetup.resume(name)
        assert not dmsetup.info(name).suspended
    assert dmsetup.is_activated(name) and dmsetup.info(name).live_table
    dmsetup.remove(name)
    assert not dmsetup.is_loaded(name)
    dmsetup.remove(name)  # gone already: not an error
    dmsetup.delete_device(pool.name, 1)
    with pytest.raises(DmError) as e:
        dmsetup.delete_device(pool.name, 1)
    assert e.value.errno == errno.ENODATA
    with pytest.raises(DmError) as e:
        dmsetup.info(f"{pool.name}-missing")
    assert e.value.errno == errno.ENXIO


# -- PoolDevice ---------------------------------------------------------------------------


def test_thin_devices_have_distinct_ids_and_usage_after_mkfs(device: PoolDevice) -> None:
    a = device.create_thin_device(f"{device.pool}-a", 64 * MiB)
    b = device.create_thin_device(f"{device.pool}-b", 64 * MiB)
    assert a.device_id != b.device_id and a.state == b.state == DeviceState.ACTIVATED
    assert device.get_usage(a.name) == 0
    subprocess.run(["mkfs.ext4", "-q", device.dev_path(a.name)], check=True)
    assert device.get_usage(a.name) > 0
    device.remove_device(a.name)
    assert not device.is_loaded(a.name) and device.md.find_device(a.name) is None
    assert device.md.id_state(a.device_id) == IdState.FREE


def test_a_snapshot_keeps_what_its_origin_held(device: PoolDevice, tmp_path: Path) -> None:
    origin = device.create_thin_device(f"{device.pool}-origin", 64 * MiB)
    path = device.dev_path(origin.name)
    with open(path, "r+b") as f:
        f.write(b"v1" * 2048)
    snap = device.create_snapshot_device(origin.name, f"{device.pool}-snap", 64 * MiB)
    assert device.md.get_device(origin.name).state == DeviceState.RESUMED, "the origin was suspended, then resumed"
    with open(path, "r+b") as f:
        f.write(b"v2" * 2048)
    with open(device.dev_path(snap.name), "rb") as f:
        assert f.read(4096) == b"v1" * 2048
    with open(path, "rb") as f:
        assert f.read(4096) == b"v2" * 2048
    assert snap.parent_name == origin.name


def test_a_failed_activation_rolls_back(device: PoolDevice) -> None:
    name = f"{device.pool}-clash"
    # Something else already holds the device-mapper name: activation fails (EBUSY).
    dmsetup.create_thin(device.pool, 4000)
    dmsetup.activate(name, device.pool, 4000, 8 * MiB)
    try:
        with pytest.raises(DmError):
            device.create_thin_device(name, 8 * MiB)
        assert device.md.find_device(name) is None, "the record is gone"
        assert device.md.id_state(1) == IdState.FREE, "its id is free again"
        # ... and the thin device it created in the pool is gone too: the id can be created anew.
        dmsetup.create_thin(device.pool, 1)
        dmsetup.delete_device(device.pool, 1)
    finally:
        dmsetup.remove(name)
        dmsetup.delete_device(device.pool, 4000)


def test_reconciliation_after_a_restart(tmp_path: Path, pool: Pool) -> None:
    md = PoolMetadata(str(tmp_path / "p.db"))
    dev = PoolDevice(pool.name, md)
    live = dev.create_thin_device(f"{pool.name}-live", 8 * MiB)
    gone = dev.create_thin_device(f"{pool.name}-gone", 8 * MiB)
    dmsetup.remove(gone.name)  # as after a reboot: recorded Activated, not live
    md.add_device(f"{pool.name}-cut", 8 * MiB)
    md.change_device_state(f"{pool.name}-cut", DeviceState.CREATING)  # a create cut off
    dev.close()
    dev = PoolDevice(pool.name, PoolMetadata(str(tmp_path / "p.db")))
    try:
        assert dev.is_activated(gone.name) and dev.is_activated(live.name)
        cut = dev.md.get_device(f"{pool.name}-cut")
        assert cut.state == DeviceState.FAULTY and dev.md.id_state(cut.device_id) == IdState.FAULTY
        assert dev.md.get_device(gone.name).state == DeviceState.ACTIVATED
    finally:
        dev.close()


def test_a_missing_pool_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="does not exist"):
        PoolDevice("nhtest-no-such-pool", PoolMetadata(str(tmp_path / "p.db")))


# -- the snapshotter ----------------------------------------------------------------------


def config(tmp_path: Path, pool: Pool, **extra: object) -> DevmapperConfig:
    return from_dict({"root_path": str(tmp_path / "root"), "pool_name": pool.name, **extra})


def test_snapshotter_prepare_commit_and_children(tmp_path: Path, pool: Pool) -> None:
    sn = DevmapperSnapshotter(config(tmp_path, pool, base_image_size="64MB"))
    try:
        (m,) = sn.prepare("base", "", {})
        assert m.type == "ext4" and m.source.startswith(f"/dev/mapper/{pool.name}-snap-") and m.options == ()
        mnt = tmp_path / "m"
        mounted(m.source, mnt, "ext4")
        try:
            assert not (mnt / "lost+found").exists(), "lost+found is removed"
            (mnt / "file").write_text("base layer")
        finally:
            syscall.umount(str(mnt))
        base_usage = sn.usage("base").size
        assert base_usage > 0
        sn.commit("base-c", "base", {})
        assert sn.stat("base-c").labels[FSTYPE_LABEL] == "ext4"
        assert not dmsetup.is_loaded(m.source.split("/")[-1]), "a committed device is deactivated"
        (child,) = sn.prepare("child", "base-c", {})
        assert child.source != m.source
        mounted(child.source, mnt, "ext4")
        try:
            assert (mnt / "file").read_text() == "base layer"
            (mnt / "more").write_bytes(os.urandom(2 * MiB))
            os.sync()
        finally:
            syscall.umount(str(mnt))
        assert sn.usage("child").size >= 2 * MiB, "the child's own blocks, its parent's subtracted"
        (view,) = sn.view("v", "base-c", {})
        assert view.options == ("ro",)
        with pytest.raises(FailedPrecondition):
            sn.remove("base-c")  # a device with children
        for key in ("v", "child", "base-c"):
            sn.remove(key)
        assert sn.pool.md.walk_devices() == []
    finally:
        sn.close()


def test_two_xfs_mounts_of_a_parent_and_its_child(tmp_path: Path, pool: Pool) -> None:
    sn = DevmapperSnapshotter(config(tmp_path, pool, base_image_size="300MB", fs_type="xfs"))
    try:
        sn.prepare("base", "", {})
        sn.commit("base-c", "base", {})
        (a,) = sn.prepare("a", "base-c", {})
        (b,) = sn.view("b", "base-c", {})
        assert a.type == "xfs" and a.options == ("nouuid",) and b.options == ("nouuid", "ro")
        # Both carry the parent's file system UUID: only nouuid lets xfs mount them together.
        mounted(a.source, tmp_path / "a", "xfs", "nouuid")
        try:
            (tmp_path / "b").mkdir()
            syscall.mount(b.source, str(tmp_path / "b"), "xfs", syscall.MS_RDONLY, "nouuid")
            syscall.umount(str(tmp_path / "b"))
        finally:
            syscall.umount(str(tmp_path / "a"))
        assert sn.stat("a").labels[FSTYPE_LABEL] == "xfs"
    finally:
        sn.reset_pool()
        sn.close()


def test_async_remove_leaves_the_device_for_cleanup(tmp_path: Path, pool: Pool) -> None:
    sn = DevmapperSnapshotter(config(tmp_path, pool, base_image_size="32MB", async_remove=True))
    try:
        (m,) = sn.prepare("x", "", {})
        name = m.source.split("/")[-1]
        sn.remove("x")
        assert sn.pool.md.get_device(name).state == DeviceState.REMOVED
        assert sn.cleanup() == [name]
        assert sn.pool.md.find_device(name) is None and not dmsetup.is_loaded(name)
    finally:
        sn.close()


def test_mkfs_failure_is_reported_and_leaves_nothing(tmp_path: Path, pool: Pool) -> None:
    sn = DevmapperSnapshotter(config(tmp_path, pool, base_image_size="32MB", fs_options="no_such_option"))
    try:
        with pytest.raises(FailedPrecondition, match=r"mkfs\.ext4 -E no_such_option .* failed: .*[Bb]ad option"):
            sn.prepare("x", "", {})
        assert sn.pool.md.walk_devices() == [] and list(sn.walk([])) == []
    finally:
        sn.close()


def test_a_full_pool_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    # 16 MiB of data blocks: mkfs of a 64 MiB ext4 with eager inode tables runs out.
    small = Pool(tmp_path, data=16 * MiB)
    try:
        sn = DevmapperSnapshotter(config(tmp_path, small, base_image_size="256MB"))
        try:
            with pytest.raises(FailedPrecondition):
                sn.prepare("x", "", {})
            assert list(sn.walk([])) == []
            assert [d.state for d in sn.pool.md.walk_devices()] in ([], [DeviceState.FAULTY])
        finally:
            sn.close()
    finally:
        small.remove()


def test_kinds_survive_in_the_metastore(tmp_path: Path, pool: Pool) -> None:
    sn = DevmapperSnapshotter(config(tmp_path, pool, base_image_size="16MB"))
    try:
        sn.prepare("a", "", {"x": "1"})
        assert sn.stat("a").kind == Kind.ACTIVE and sn.stat("a").labels["x"] == "1"
        assert sn.mounts("a")[0].type == "ext4"
        sn.remove("a")
    finally:
        sn.close()


# -- crash safety ---------------------------------------------------------------------------


def _churn(address: Path, seed: int) -> None:
    """Through the server's gRPC socket: Prepare, Commit, Prepare a child, Remove, over and
    over, until the server is killed under it."""
    import random

    from tests.helpers.snapshots import SnapshotsClient

    rnd = random.Random(seed)
    c = SnapshotsClient(str(address), timeout=60)
    n = 0
    try:
        while True:
            n += 1
            base, child = f"b{seed}-{n}", f"c{seed}-{n}"
            c.prepare(base)
            c.commit(f"{base}-c", base)
            c.prepare(child, f"{base}-c")
            if rnd.random() < 0.5:
                c.commit(f"{child}-c", child)
                c.remove(f"{child}-c")
            else:
                c.remove(child)
            c.remove(f"{base}-c")
    except grpc.RpcError:
        pass  # the kill
    finally:
        c.close()


def pool_device_ids(pool: Pool) -> set[int]:
    """The thin device ids the pool itself holds, from its metadata (thin_dump of a
    metadata snapshot, so the live pool keeps running)."""
    dmsetup.run("message", f"/dev/mapper/{pool.name}", "0", "reserve_metadata_snap")
    try:
        p = subprocess.run(["thin_dump", "--metadata-snap", pool.loops["meta"]], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    finally:
        dmsetup.run("message", f"/dev/mapper/{pool.name}", "0", "release_metadata_snap")
    return {int(m) for m in re.findall(r'<device dev_id="(\d+)"', p.stdout)}


def check_consistent(sn: DevmapperSnapshotter, pool: Pool, faulty_before: set[int]) -> set[int]:
    """Every snapshot has its device record, none Faulty; every record but a Faulty one has
    its snapshot; the pool holds exactly the recorded devices (nothing leaked, nothing
    lost), give or take a Faulty one; faulty ids stay quarantined."""
    infos = {sn.ms.info(k)[0] for k in sn.ms.ids().values()}
    records = {d.name: d for d in sn.pool.md.walk_devices()}
    for id_ in infos:
        d = records.get(sn.device_name(id_))
        assert d is not None and d.state != DeviceState.FAULTY, (id_, d)
    live = {d.device_id for d in records.values() if d.state != DeviceState.FAULTY}
    for d in records.values():
        if d.state != DeviceState.FAULTY:
            assert d.name.rsplit("-", 1)[1] in infos, f"orphan device {d}"
    faulty = set(sn.pool.md.faulty_ids())
    in_pool = pool_device_ids(pool)
    assert live <= in_pool, f"devices lost from the pool: {sorted(live - in_pool)}"
    assert in_pool - live <= faulty, f"devices leaked in the pool: {sorted(in_pool - live - faulty)}"
    assert faulty_before <= faulty, "a faulty id was reused"
    return faulty


def test_kill_9_mid_operation_loses_and_leaks_nothing(tmp_path: Path, pool: Pool) -> None:
    """The serving process (`nydus-hybrid devmapper serve`) is killed at a random point while
    a client churns through it; the next start's reconciliation must leave a consistent pool."""
    import random
    import signal
    import threading
    import time

    cfg = config(tmp_path, pool, base_image_size="16MB")
    cfg_path = tmp_path / "devmapper.toml"
    cfg_path.write_text(f'root_path = "{cfg.root_path}"\npool_name = "{pool.name}"\nbase_image_size = "16MB"\n')
    address = tmp_path / "dm.sock"
    rnd = random.Random(1234)
    faulty: set[int] = set()
    for round_ in range(ROUNDS):
        server = start_server(cfg_path, address, tmp_path / "dm.log")
        client = threading.Thread(target=_churn, args=(address, round_))
        client.start()
        time.sleep(rnd.uniform(0.2, 3.0))
        server.send_signal(signal.SIGKILL)
        server.wait()
        client.join(timeout=120)
        assert not client.is_alive(), "the client hung on a killed server"
        address.unlink(missing_ok=True)
        sn = DevmapperSnapshotter(cfg)  # a restart's reconciliation runs here
        try:
            faulty = check_consistent(sn, pool, faulty)
        finally:
            sn.close()
    sn = DevmapperSnapshotter(cfg)
    try:
        for _ in range(5):  # leaves first: a parent goes once its children have
            for info in list(sn.walk([])):
                try:
                    sn.remove(info.name)
                except FailedPrecondition:
                    pass
        assert list(sn.walk([])) == []
        check_consistent(sn, pool, faulty)
    finally:
        sn.close()


# -- containerd -----------------------------------------------------------------------------

PLUGIN = "nh-devmapper"


def start_server(cfg_path: Path, address: Path, log_path: Path) -> subprocess.Popen[bytes]:
    import sys
    import time

    from nydus_hybrid.waits import scaled
    from tests.helpers.snapshots import SnapshotsClient

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nydus_hybrid.devmapper",
                "serve",
                "--config",
                str(cfg_path),
                "--address",
                str(address),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + scaled(30)
    while True:
        assert proc.poll() is None, log_path.read_text()
        if address.exists():
            try:
                c = SnapshotsClient(str(address), timeout=2)
                c.list()
                c.close()
                return proc
            except Exception:
                pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)


def test_containerd_pulls_and_runs_an_oci_image_on_thin_devices(tmp_path: Path, pool: Pool) -> None:
    from tests.helpers import servers
    from tests.helpers.containerd import Containerd

    storage = os.environ.get("NYDUS_VM_REGISTRY_DIR")
    assert storage, "tests/vm/test_real_kernel.py prepares the registry and boot.sh names it"
    cfg_path = tmp_path / "devmapper.toml"
    cfg_path.write_text(f'root_path = "{tmp_path / "dm"}"\npool_name = "{pool.name}"\nbase_image_size = "1GB"\n')
    address = tmp_path / "dm.sock"
    server = start_server(cfg_path, address, tmp_path / "dm.log")
    registry = servers.Registry(Path(storage)).start()
    ctd = Containerd(tmp_path / "ctd", address, plugin=PLUGIN).start()
    try:
        ref = f"{registry.host}/debian:oci"
        ctd.ctr("images", "pull", "--plain-http", "--snapshotter", PLUGIN, ref)
        out = ctd.ctr("run", "--rm", "--snapshotter", PLUGIN, ref, "dm-1", "sh", "-c", "cat /etc/debian_version; mount")
        version, *mounts = out.stdout.splitlines()
        assert version.strip() and version[0].isdigit(), out.stdout
        root = next(line for line in mounts if " on / " in line)
        assert root.startswith(f"/dev/mapper/{pool.name}-snap-") and "type ext4" in root, root
        status = cli.status(str(cfg_path))
        assert status["devices"] and status["faulty_ids"] == [], status
        ctd.ctr("images", "rm", "--sync", ref)
        ctd.ctr("snapshots", "--snapshotter", PLUGIN, "ls")
    finally:
        ctd.stop()
        server.terminate()
        server.wait(timeout=60)
        registry.close()


def test_removing_a_device_in_use_is_refused_and_loses_nothing(tmp_path: Path, pool: Pool) -> None:
    sn = DevmapperSnapshotter(config(tmp_path, pool, base_image_size="32MB"))
    mnt = tmp_path / "busy"
    try:
        (m,) = sn.prepare("busy", "", {})
        mounted(m.source, mnt, "ext4")
        (mnt / "kept").write_text("still here")
        with pytest.raises(FailedPrecondition, match="is open"):
            sn.remove("busy")
        assert (mnt / "kept").read_text() == "still here", "the mounted file system still reads"
        assert sn.stat("busy").kind == Kind.ACTIVE, "the snapshot stays"
        assert sn.pool.md.get_device(m.source.split("/")[-1]).state == DeviceState.ACTIVATED
        syscall.umount(str(mnt))
        sn.remove("busy")
        assert sn.pool.md.walk_devices() == []
    finally:
        if mnt.is_mount():
            syscall.umount(str(mnt))
        sn.close()
