"""The daemon manager with the fscache driver (spec A13 scenarios 10-12, and the kill
scenarios of the fuse driver): one real ``singleton`` daemon, real EROFS mounts, the real
SQLite store, and the cachefiles **simulator** in place of the kernel's /dev/cachefiles,
which this kernel lacks (docs/fscache-simulator.md). The daemons reach the simulator
through NYDUS_HYBRID_CACHEFILES, inherited from the manager."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from nydus_hybrid.client import DaemonClient
from nydus_hybrid.mounts import erofs, fscache
from tests.helpers.daemons import BuiltImage, is_mounted
from tests.helpers.load import ReadLoad
from tests.helpers.managers import (
    KEYS,
    KILL_ROUNDS,
    ManagerProc,
    assert_readable,
    daemon_pids,
    kill_at_random_points,
    kill_daemons_twice_under_reads,
    mountpoints,
    teardown,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not erofs.erofs_available(),
    reason="fscache instances are EROFS mounts: needs root and file-backed EROFS",
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    base = tmp_path_factory.mktemp("fscache-images")
    return {k: BuiltImage(base / k, tag=k) for k in KEYS}


@pytest.fixture
def root(tmp_path, sim):
    r = tmp_path / "root"
    yield r
    teardown(r)


def start(root: Path, policy: str = "failover") -> ManagerProc:
    return ManagerProc(root, "shared", policy, extra=["--fs-driver", "fscache"]).start()


def entries(doc: Dict[str, Any]) -> List[Any]:
    d = doc["daemons"][0]
    c = DaemonClient(d["api_socket"], timeout=30)
    try:
        listed: List[Any] = c.get("/api/v2/blobs?domain_id=")
        return listed
    finally:
        c.close()


def test_three_images_on_one_singleton_daemon(images, root, sim):
    m = start(root)
    try:
        for k in KEYS:
            rec = m.mount(k, images[k])
            assert rec["state"] == "mounted"
            fid = hashlib.sha256(f"nydus-snapshot-{k}".encode()).hexdigest()
            assert rec["annotations"] == {"fscache.id": fid, "fscache.domainid": fid}
            assert rec["mountpoint"] == str(root / "snapshots" / k / "mnt")
        assert m.mount("img1", images["img1"])["state"] == "mounted"  # idempotent
        doc = m.describe()
        assert len(doc["daemons"]) == 1 and doc["daemons"][0]["fs_driver"] == "fscache"
        assert doc["daemons"][0]["mountpoint"] == ""
        assert sorted(e["id"] for e in entries(doc)) == sorted(i["annotations"]["fscache.id"] for i in doc["instances"])
        for k, mp in mountpoints(doc).items():
            assert is_mounted(mp)
            assert_readable(mp, images[k])
        st = sim.status()
        assert st["bound"] and st["counters"]["protocol_errors"] == 0
        assert st["counters"]["reads"] > 0, "data came through on-demand READs"
        # umount one: its EROFS mount and entry are gone, the others untouched
        gone = mountpoints(doc)["img2"]
        gone_id = next(i["annotations"]["fscache.id"] for i in doc["instances"] if i["snapshot_id"] == "img2")
        data_id = next(
            o["cookie"] for o in sim.status()["objects"] if o["volume"] == f"erofs,{gone_id}" and o["cookie"] != gone_id
        )
        m.umount("img2")
        doc = m.describe()
        assert sorted(mountpoints(doc)) == ["img1", "img3"] and not is_mounted(gone)
        # unmounting names the objects' files (as the kernel links its tmpfiles); the
        # manager then culls the bootstrap's and keeps the data blob's
        assert list(fscache.cache_files(str(root / "cache"), data_id)), "the data blob's file is kept"
        assert not list(fscache.cache_files(str(root / "cache"), gone_id)), "its bootstrap's cache file is culled"
        assert len(entries(doc)) == 2
        assert_readable(mountpoints(doc)["img3"], images["img3"])
        assert sim.status()["counters"]["protocol_errors"] == 0
    finally:
        m.stop()


def test_kill_only_the_manager(images, root, sim):
    m = start(root)
    for k in KEYS:
        m.mount(k, images[k])
    before = m.describe()
    mps = mountpoints(before)
    with ReadLoad([mps["img1"]], images["img1"].files, readers=2, listers=1) as load:
        m.kill()
        m2 = start(root)
        after = m2.describe()
        assert daemon_pids(after) == daemon_pids(before), "the same singleton daemon, reconnected"
        assert mountpoints(after) == mps and not after["unexplained"]
        load.wait_reads(10)
    assert not load.errors, load.errors[:5]
    m2.stop()


def test_failover_policy_kill_the_daemon_twice_under_reads(images, root, sim):
    m = start(root, "failover")
    try:
        kill_daemons_twice_under_reads(m, images)
        assert sim.status()["counters"]["restores"] == 2
        for k, mp in mountpoints(m.describe()).items():
            assert_readable(mp, images[k])
    finally:
        m.stop()


def test_restart_policy_remounts_every_instance(images, root, sim):
    m = start(root, "restart")
    try:
        for k in KEYS:
            m.mount(k, images[k])
        before = m.describe()
        victim = before["daemons"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(lambda: daemon_pids(m.describe())[victim["id"]] != victim["pid"])
        wait_until(lambda: all(i["state"] == "mounted" for i in m.describe()["instances"]))
        wait_until(lambda: len(entries(m.describe())) == 3)
        for k, mp in mountpoints(m.describe()).items():
            assert_readable(mp, images[k])
    finally:
        m.stop()


def test_kill_daemon_and_manager_together(images, root, sim):
    m = start(root)
    for k in KEYS:
        m.mount(k, images[k])
    before = m.describe()
    for d in before["daemons"]:
        os.kill(d["pid"], signal.SIGKILL)
    m.kill()
    time.sleep(0.3)
    m2 = start(root)
    try:
        after = m2.describe()
        assert set(daemon_pids(after)) == set(daemon_pids(before))
        assert not set(daemon_pids(after).values()) & set(daemon_pids(before).values()), "a new process"
        assert all(i["state"] == "mounted" for i in after["instances"])
        for k, mp in mountpoints(after).items():
            assert_readable(mp, images[k])
    finally:
        m2.stop()


def fscache_served(doc: Dict[str, Any]) -> List[Any]:
    """The instances whose entry the daemon has and whose EROFS mount is there."""
    ids = {e["id"] for e in entries(doc)}
    return sorted(
        i["snapshot_id"]
        for i in doc["instances"]
        if i["annotations"]["fscache.id"] in ids and is_mounted(i["mountpoint"])
    )


def test_kill_the_manager_at_random_points(images, root, sim):
    """Half the fuse driver's rounds: each fscache mount is two steps (bind, then mount), so
    a kill between them is among the cases."""
    kill_at_random_points(
        images, root, max(1, KILL_ROUNDS // 2), extra=["--fs-driver", "fscache"], served=fscache_served
    )
    st = sim.status()
    assert st["counters"]["protocol_errors"] == 0 and st["counters"]["eio"] == 0


def test_upgrade_through_the_manager(images, root, sim):
    m = start(root)
    try:
        for k in KEYS:
            m.mount(k, images[k])
        before = m.describe()
        mps = mountpoints(before)
        with ReadLoad([mps["img1"]], images["img1"].files, readers=2, listers=1) as load:
            load.wait_reads(5)
            out = subprocess.run(
                [sys.executable, "-m", "nydus_hybrid", "daemons", "upgrade", "--root", str(root)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0 and before["daemons"][0]["id"] in out.stdout, out.stderr
            load.wait_reads(10)
        assert not load.errors, load.errors[:5]
        after = m.describe()
        assert daemon_pids(after) != daemon_pids(before) and after["daemons"][0]["api_socket"].endswith("api1.sock")
        assert sorted(e["id"] for e in entries(after)) == sorted(
            i["annotations"]["fscache.id"] for i in after["instances"]
        )
        for k, mp in mps.items():
            assert_readable(mp, images[k])
        assert sim.status()["counters"]["restores"] == 1
    finally:
        m.stop()


def test_a_shared_domain(images, root, sim):
    """--fscache-domain: every instance in one domain (mounted with domain_id=D,fsid=F);
    unmounting one leaves the others and their entries alone."""
    m = ManagerProc(root, "shared", "failover", extra=["--fs-driver", "fscache", "--fscache-domain", "shared"]).start()
    try:
        for k in KEYS[:2]:
            rec = m.mount(k, images[k])
            assert rec["annotations"]["fscache.domainid"] == "shared"
            assert rec["annotations"]["fscache.id"] == hashlib.sha256(f"nydus-snapshot-{k}".encode()).hexdigest()
        doc = m.describe()
        assert {e["domain_id"] for e in entries(doc)} == {"shared"} and len(entries(doc)) == 2
        assert {o["volume"] for o in sim.status()["objects"]} == {"erofs,shared"}
        m.umount("img1")
        doc = m.describe()
        assert [e["id"] for e in entries(doc)] == [doc["instances"][0]["annotations"]["fscache.id"]]
        assert_readable(mountpoints(doc)["img2"], images["img2"])
    finally:
        m.stop()
