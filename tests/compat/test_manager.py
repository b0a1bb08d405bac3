"""The daemon manager (nydus_hybrid.manager) in nydus-snapshotter's integration scenarios
that need no containerd (spec A13): a real manager process (`python -m
nydus_hybrid.manager`), real daemons, real FUSE mounts, the real SQLite store, killed with
SIGKILL at the worst moments. Sizes: NYDUS_MANAGER_KILL_ROUNDS (default 20). The manager
process and the scenarios the fscache driver's tests share are in tests/helpers/managers.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List

import pytest

from nydus_hybrid.client import DaemonApiError, DaemonClient
from nydus_hybrid.lifecycle import successor
from nydus_hybrid.manager import drivers
from nydus_hybrid.manager.daemon import DaemonRecord, nydusd_argv
from nydus_hybrid.manager.manager import default_nydusd
from nydus_hybrid.manager.store import Store
from tests.helpers.daemons import BuiltImage, is_mounted, read_uncached
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
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="daemons mount FUSE: needs root and /dev/fuse"
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    base = tmp_path_factory.mktemp("manager-images")
    return {k: BuiltImage(base / k, tag=k) for k in KEYS}


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    yield r
    teardown(r)


# --- modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dedicated", "shared"])
def test_three_images_mounted_and_read(images, root, mode):
    m = ManagerProc(root, mode, "failover").start()
    try:
        for k in KEYS:
            rec = m.mount(k, images[k])
            assert rec["state"] == "mounted" and rec["seq"] >= 1
        assert m.mount("img1", images["img1"])["state"] == "mounted"  # idempotent
        doc = m.describe()
        assert len(doc["daemons"]) == (3 if mode == "dedicated" else 1)
        assert sorted(mountpoints(doc)) == sorted(KEYS)
        assert [i["seq"] for i in doc["instances"]] == sorted(i["seq"] for i in doc["instances"])
        for k, mp in mountpoints(doc).items():
            assert_readable(mp, images[k])
        # the CLI reads the same store: tables and JSON
        out = subprocess.run(
            [sys.executable, "-m", "nydus_hybrid", "daemons", "list", "--root", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and out.stdout.splitlines()[0].split()[:4] == ["ID", "MODE", "PID", "STATE"]
        assert out.stdout.count("RUNNING") == len(doc["daemons"])
        js = json.loads(
            subprocess.run(
                [sys.executable, "-m", "nydus_hybrid", "instances", "list", "--root", str(root), "--json"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        )
        assert [i["snapshot_id"] for i in js] == list(KEYS)
        show = subprocess.run(
            [
                sys.executable,
                "-m",
                "nydus_hybrid",
                "daemons",
                "show",
                doc["daemons"][0]["id"],
                "--root",
                str(root),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(show.stdout)["live"]["state"] == "RUNNING"
        # umount one: gone from the store, its mount gone, the others untouched
        m.umount("img2")
        doc = m.describe()
        assert sorted(mountpoints(doc)) == ["img1", "img3"]
        if mode == "dedicated":
            assert len(doc["daemons"]) == 2
        assert_readable(mountpoints(doc)["img3"], images["img3"])
    finally:
        m.stop()


# --- the manager dies -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dedicated", "shared"])
def test_kill_only_the_manager(images, root, mode):
    m = ManagerProc(root, mode, "failover").start()
    for k in KEYS:
        m.mount(k, images[k])
    before = m.describe()
    mps = mountpoints(before)
    with ReadLoad([mps["img1"]], images["img1"].files, readers=2, listers=1) as load:
        m.kill()
        time.sleep(0.5)
        for d in before["daemons"]:
            assert is_mounted(d["mountpoint"]), "the daemons outlive their manager"
        m2 = ManagerProc(root, mode, "failover").start()
        after = m2.describe()
        assert daemon_pids(after) == daemon_pids(before), "the same daemons, reconnected, not restarted"
        assert mountpoints(after) == mps
        assert not after["unexplained"]
        load.wait_reads(10)
        # failover still works: the new manager collected fresh state from each daemon
        victim = after["daemons"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(lambda: daemon_pids(m2.describe())[victim["id"]] != victim["pid"])
        load.wait_reads(10)
    assert not load.errors, load.errors[:5]
    for k, mp in mps.items():
        assert_readable(mp, images[k])
    m2.stop()


@pytest.mark.parametrize("mode", ["dedicated", "shared"])
def test_kill_daemons_and_manager_together(images, root, mode):
    m = ManagerProc(root, mode, "failover").start()
    for k in KEYS:
        m.mount(k, images[k])
    before = m.describe()
    for d in before["daemons"]:
        os.kill(d["pid"], signal.SIGKILL)
    m.kill()
    m2 = ManagerProc(root, mode, "failover").start()
    try:
        after = m2.describe()
        assert set(daemon_pids(after)) == set(daemon_pids(before)), "same daemon ids, restored from the store"
        assert not set(daemon_pids(after).values()) & set(daemon_pids(before).values()), "new processes"
        assert mountpoints(after) == mountpoints(before)
        assert all(i["state"] == "mounted" for i in after["instances"])
        for k, mp in mountpoints(after).items():
            assert_readable(mp, images[k])
    finally:
        m2.stop()


@pytest.mark.parametrize("mode", ["dedicated", "shared"])
def test_successor_orphaned_in_init_is_replaced(images, root, mode):
    """The manager died in the middle of a failover: its daemon is dead and the successor it
    started waits in INIT on the daemon's socket for a state that died with that manager's
    supervisor. The next manager must replace the successor, not leave it waiting forever."""
    m = ManagerProc(root, mode, "failover").start()
    for k in KEYS:
        m.mount(k, images[k])
    before = m.describe()
    m.kill()
    for d in before["daemons"]:
        os.kill(d["pid"], signal.SIGKILL)
    store = Store(str(root / "nydus.db"))
    try:
        records = [DaemonRecord.from_dict(r) for r in store.daemons()]
    finally:
        store.close()
    orphans = []
    for r in records:
        argv = nydusd_argv(default_nydusd(), r, drivers.get(r.fs_driver, str(root), r.driver_options), True)
        orphans.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for r, p in zip(records, orphans):
        c = DaemonClient(r.api_socket, timeout=2)
        try:
            successor.wait_state(c, p, "INIT", 30)
        finally:
            c.close()
    m2 = ManagerProc(root, mode, "failover").start()
    try:
        for p in orphans:
            assert p.wait(30) is not None, "the orphaned successor was stopped"
        after = m2.describe()
        assert set(daemon_pids(after)) == {r.id for r in records}
        assert not set(daemon_pids(after).values()) & {p.pid for p in orphans}, "replaced by new daemons"
        assert all(d["state"] == "RUNNING" for d in after["daemons"]), after["daemons"]
        assert all(i["state"] == "mounted" for i in after["instances"])
        for k, mp in mountpoints(after).items():
            assert_readable(mp, images[k])
    finally:
        m2.stop()
        for p in orphans:
            if p.poll() is None:
                p.kill()
                p.wait()
    log = (root.parent / f"{root.name}-manager.log").read_text()
    assert log.count('"orphan_successor_replaced"') == len(records)


# --- recover policies -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dedicated", "shared"])
def test_failover_policy_kill_daemons_twice_under_reads(images, root, mode):
    m = ManagerProc(root, mode, "failover").start()
    try:
        kill_daemons_twice_under_reads(m, images)
    finally:
        m.stop()


@pytest.mark.parametrize("mode", ["dedicated", "shared"])
def test_failover_to_a_warm_standby(images, root, mode):
    """--failover-standby: each daemon has a successor waiting in INIT; a kill -9 makes that
    successor the daemon (its pid, its socket) and a new standby appears. Reads never fail;
    the longest read stall is printed next to the plain failover's for comparison."""
    stalls: Dict[bool, List[float]] = {}
    for standby in (False, True):
        r = root.parent / ("r1" if standby else "r0")  # short: <root>/supervisor/<id>.sock must fit sun_path
        m = ManagerProc(r, mode, "failover", extra=["--failover-standby"] if standby else []).start()
        try:
            for k in KEYS:
                m.mount(k, images[k])
            mps = mountpoints(m.describe())
            with ReadLoad([mps["img1"]], images["img1"].files, readers=2, listers=0) as load:
                load.wait_reads(10)
                for _ in range(2):
                    before = m.describe()["daemons"]
                    victim = next(d for d in before if mps["img1"].startswith(d["mountpoint"]))
                    if standby:
                        assert victim["standby_pid"] > 0 and os.path.exists(victim["standby_socket"])
                    t0 = time.monotonic()
                    os.kill(victim["pid"], signal.SIGKILL)

                    def replaced(m: ManagerProc = m, victim: Dict[str, Any] = victim) -> bool:
                        return bool(daemon_pids(m.describe())[victim["id"]] != victim["pid"])

                    wait_until(replaced)
                    load.wait_reads(10)
                    stalls.setdefault(standby, []).append(load.longest_stall(since=t0))
                    now = next(d for d in m.describe()["daemons"] if d["id"] == victim["id"])
                    if standby:
                        assert now["pid"] == victim["standby_pid"] and now["api_socket"] == victim["standby_socket"]

                        def has_a_standby(m: ManagerProc = m, victim: Dict[str, Any] = victim) -> bool:
                            d = next(d for d in m.describe()["daemons"] if d["id"] == victim["id"])
                            return bool(d["standby_pid"] > 0)

                        wait_until(has_a_standby)
            assert not load.errors, load.errors[:5]
            for k, mp in mps.items():
                assert_readable(mp, images[k])
        finally:
            m.stop()
            teardown(r)
    print(
        f"longest read stall per failover, {mode}: plain {[round(s * 1000) for s in stalls[False]]} ms, "
        f"standby {[round(s * 1000) for s in stalls[True]]} ms"
    )


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_standbys_across_manager_restart_upgrade_and_umount(images, root):
    """A restarted manager replaces the standbys its predecessor left (they are not its
    children); an upgrade replaces a standby (it runs the old code); a umount stops the
    dedicated daemon's standby with it. No standby process is ever left behind."""
    extra = ["--failover-standby"]
    m = ManagerProc(root, "dedicated", "failover", extra=extra).start()
    for k in KEYS[:2]:
        m.mount(k, images[k])
    old = {d["id"]: d["standby_pid"] for d in m.describe()["daemons"]}
    assert all(pid > 0 and _pid_alive(pid) for pid in old.values())
    m.kill()
    m = ManagerProc(root, "dedicated", "failover", extra=extra).start()
    try:
        wait_until(lambda: all(not _pid_alive(pid) for pid in old.values()))
        now = {d["id"]: d["standby_pid"] for d in m.describe()["daemons"]}
        assert set(now) == set(old) and all(_pid_alive(p) and p not in old.values() for p in now.values())
        out = subprocess.run(
            [sys.executable, "-m", "nydus_hybrid", "daemons", "upgrade", "--root", str(root)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        after = {d["id"]: d["standby_pid"] for d in m.describe()["daemons"]}
        assert all(not _pid_alive(p) for p in now.values()) and all(_pid_alive(p) for p in after.values())
        victim = next(d for d in m.describe()["daemons"] if d["mountpoint"].endswith("/img1/mnt"))
        m.umount("img1")
        wait_until(lambda: not _pid_alive(victim["standby_pid"]))
        for k, mp in mountpoints(m.describe()).items():
            assert_readable(mp, images[k])
    finally:
        m.stop()


def test_restart_policy_brings_instances_back(images, root):
    m = ManagerProc(root, "shared", "restart").start()
    try:
        for k in KEYS:
            m.mount(k, images[k])
        before = m.describe()
        os.kill(before["daemons"][0]["pid"], signal.SIGKILL)
        wait_until(lambda: daemon_pids(m.describe())[before["daemons"][0]["id"]] != before["daemons"][0]["pid"])
        wait_until(lambda: all(i["state"] == "mounted" for i in m.describe()["instances"]))
        for k, mp in mountpoints(m.describe()).items():

            def reads(mp: str = mp) -> bool:
                return read_uncached(os.path.join(mp, "hello.txt")).returncode == 0

            wait_until(reads)
            assert_readable(mp, images[k])
    finally:
        m.stop()


# --- kill -9 at random points ---------------------------------------------------------------


def test_kill_the_manager_at_random_points(images, root):
    kill_at_random_points(images, root, KILL_ROUNDS)


# --- bad input ------------------------------------------------------------------------------


def test_corrupt_db_is_refused_and_left_alone(root):
    root.mkdir(parents=True)
    db = root / "nydus.db"
    junk = b"this is not a database" * 100
    db.write_bytes(junk)
    r = subprocess.run(
        [sys.executable, "-m", "nydus_hybrid.manager", "--root", str(root)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and "nydus.db" in r.stderr and "left untouched" in r.stderr, r.stderr
    assert db.read_bytes() == junk
    r = subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", "daemons", "list", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "nydus.db" in r.stderr


def test_missing_daemon_binary_loses_nothing(images, root):
    m = ManagerProc(root, "dedicated", "failover").start()
    try:
        m.mount("img1", images["img1"])
    finally:
        m.stop()
    bad = ManagerProc(root, "dedicated", "failover", nydusd="/nonexistent/nydusd").start()
    try:
        with pytest.raises(DaemonApiError) as e:
            bad.mount("img2", images["img2"])
        assert e.value.status == 500 and "/nonexistent/nydusd" in e.value.message
        doc = bad.describe()
        assert sorted(mountpoints(doc)) == ["img1"], "the failed mount left no record; the good one stayed"
        assert len(doc["daemons"]) == 1
        assert_readable(mountpoints(doc)["img1"], images["img1"])
    finally:
        bad.stop()


@pytest.mark.parametrize("policy", ["none", "failover"])  # failover: a supervisor socket too
def test_socket_path_too_long_loses_nothing(images, tmp_path, policy):
    root = tmp_path / ("r" * 30)  # <root>/system.sock fits in sun_path; <root>/socket/<id>/api.sock does not
    m = ManagerProc(root, "dedicated", policy)
    root.mkdir(parents=True)
    try:
        # the manager's own socket fits; a daemon's socket under <root>/socket/<id>/ does not
        m.start()
        with pytest.raises(DaemonApiError) as e:
            m.mount("img1", images["img1"])
        assert "too long" in e.value.message
        assert m.describe() == {"daemons": [], "instances": [], "unexplained": []}
        assert not list((root / "config").glob("*")) if (root / "config").exists() else True, "nothing written"
    finally:
        m.stop()
        teardown(root)
