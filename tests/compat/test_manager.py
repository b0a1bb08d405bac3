"""The daemon manager (nydus_hybrid.manager) in nydus-snapshotter's integration scenarios
that need no containerd (spec A13): a real manager process (`python -m
nydus_hybrid.manager`), real daemons, real FUSE mounts, the real SQLite store, killed with
SIGKILL at the worst moments. Sizes: NYDUS_MANAGER_KILL_ROUNDS (default 20)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemontools import BuiltImage, is_mounted, lazy_umount, read_uncached, v1_config

from loadtools import ReadLoad
from nydus_hybrid.client import DaemonApiError, DaemonClient

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="daemons mount FUSE: needs root and /dev/fuse"
)

KILL_ROUNDS = int(os.environ.get("NYDUS_MANAGER_KILL_ROUNDS", "20"))
KEYS = ("img1", "img2", "img3")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    base = tmp_path_factory.mktemp("manager-images")
    return {k: BuiltImage(base / k, tag=k) for k in KEYS}


class ManagerProc:
    """`python -m nydus_hybrid.manager` and a client for its system.sock."""

    def __init__(self, root: Path, mode: str, policy: str, nydusd=None, extra=()):
        self.root, self.mode, self.policy, self.nydusd, self.extra = root, mode, policy, nydusd, list(extra)
        self.proc = None

    def start(self, wait: bool = True) -> ManagerProc:
        argv = [
            sys.executable,
            "-m",
            "nydus_hybrid.manager",
            "--root",
            str(self.root),
            "--daemon-mode",
            self.mode,
            "--recover-policy",
            self.policy,
            "--log-level",
            "info",
        ]
        if self.nydusd:
            argv += ["--nydusd", self.nydusd]
        argv += self.extra
        self.log = open(self.root.parent / f"{self.root.name}-manager.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"manager exited with {self.proc.returncode}")
            try:
                self.get("/api/v1/daemons")
                return
            except (OSError, DaemonApiError):
                time.sleep(0.05)
        raise AssertionError("manager not ready")

    def request(self, method, path, body=None, timeout: float = 60.0):
        c = DaemonClient(str(self.root / "system.sock"), timeout=timeout)
        try:
            return c.request(method, path, body)
        finally:
            c.close()

    def get(self, path):
        return self.request("GET", path)

    def mount(self, key: str, img: BuiltImage):
        cfg = v1_config(f"/{key}", img.blobs, self.root.parent / f"cache-{key}")
        return self.request(
            "POST",
            "/api/v1/instances",
            {"snapshot_id": key, "image_id": key, "bootstrap": str(img.boot), "config": cfg},
        )

    def umount(self, key: str):
        return self.request("DELETE", f"/api/v1/instances/{key}")

    def describe(self) -> dict:
        return self.get("/api/v1/daemons")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()


def daemon_pids(doc: dict) -> dict:
    return {d["id"]: d["pid"] for d in doc["daemons"]}


def teardown(root: Path) -> None:
    """Stop every daemon the store knows (SIGTERM unmounts) and any mount left."""
    db = root / "nydus.db"
    if db.exists():
        con = sqlite3.connect(db)
        try:
            records = [json.loads(rec) for (rec,) in con.execute("SELECT record FROM daemons")]
        except sqlite3.DatabaseError:
            records = []  # the corrupt-DB test's file
        con.close()
        for r in records:
            for pid in (r["pid"], r.get("standby_pid", 0)):
                try:
                    if pid:
                        os.kill(pid, signal.SIGTERM)
                except (ProcessLookupError, OSError):
                    pass
    time.sleep(0.5)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if mp.startswith(str(root)):
                lazy_umount(mp)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    yield r
    teardown(r)


def assert_readable(mountpoint: str, img: BuiltImage) -> None:
    for rel, data in img.files.items():
        r = read_uncached(os.path.join(mountpoint, rel))
        assert r.returncode == 0 and r.stdout == data, (mountpoint, rel, r.stderr[-300:])


def mountpoints(doc: dict) -> dict:
    return {i["snapshot_id"]: i["mountpoint"] for i in doc["instances"]}


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
        _wait(lambda: daemon_pids(m2.describe())[victim["id"]] != victim["pid"])
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


# --- recover policies -----------------------------------------------------------------------


def kill_daemons_twice_under_reads(m: ManagerProc, images) -> None:
    """Three images mounted; 4 readers on one and a lister on all while every daemon is
    killed -9, twice: no read and no listing may fail."""
    for k in KEYS:
        m.mount(k, images[k])
    mps = mountpoints(m.describe())
    with (
        ReadLoad([mps[k] for k in KEYS], images["img1"].files, readers=0, listers=1) as lister,
        ReadLoad([mps["img1"]], images["img1"].files, readers=4, listers=0) as load,
    ):
        load.wait_reads(20)
        for _ in range(2):
            pids = daemon_pids(m.describe())
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            _wait(lambda: all(p not in pids.values() for p in daemon_pids(m.describe()).values()))
            load.wait_reads(20)
    assert not load.errors, load.errors[:5]
    assert not lister.errors, lister.errors[:5]


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
    stalls = {}
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
                    _wait(lambda: daemon_pids(m.describe())[victim["id"]] != victim["pid"])
                    load.wait_reads(10)
                    stalls.setdefault(standby, []).append(load.longest_stall(since=t0))
                    now = next(d for d in m.describe()["daemons"] if d["id"] == victim["id"])
                    if standby:
                        assert now["pid"] == victim["standby_pid"] and now["api_socket"] == victim["standby_socket"]
                        _wait(
                            lambda: (
                                next(d for d in m.describe()["daemons"] if d["id"] == victim["id"])["standby_pid"] > 0
                            )
                        )
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
        _wait(lambda: all(not _pid_alive(pid) for pid in old.values()))
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
        _wait(lambda: not _pid_alive(victim["standby_pid"]))
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
        _wait(lambda: daemon_pids(m.describe())[before["daemons"][0]["id"]] != before["daemons"][0]["pid"])
        _wait(lambda: all(i["state"] == "mounted" for i in m.describe()["instances"]))
        for k, mp in mountpoints(m.describe()).items():
            _wait(lambda: read_uncached(os.path.join(mp, "hello.txt")).returncode == 0)
            assert_readable(mp, images[k])
    finally:
        m.stop()


def _wait(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except (OSError, DaemonApiError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


# --- kill -9 at random points ---------------------------------------------------------------


def fuse_served(doc: dict) -> list:
    d = doc["daemons"][0]
    return sorted(k.lstrip("/") for k in DaemonClient(d["api_socket"]).get("/api/v1/daemon")["backend_collection"])


def kill_at_random_points(images, root, rounds: int, extra=(), served=fuse_served) -> None:
    """Mounts and umounts in a loop, the manager killed -9 at a random moment, restarted:
    the store opens, nothing is unexplained, every recorded instance is mounted and served,
    and reads."""
    rng = random.Random(7)
    m = ManagerProc(root, "shared", "failover", extra=extra).start()
    for rnd in range(rounds):
        stop = threading.Event()

        def churn():
            while not stop.is_set():
                k = rng.choice(KEYS)
                try:
                    if rng.random() < 0.5:
                        m.mount(k, images[k])
                    else:
                        m.umount(k)
                except (OSError, DaemonApiError):
                    pass

        t = threading.Thread(target=churn)
        t.start()
        time.sleep(rng.uniform(0.05, 0.6))
        m.kill()
        stop.set()
        t.join(60)
        # the store always opens, and recovery leaves it consistent with what is mounted
        m = ManagerProc(root, "shared", "failover", extra=extra).start()
        doc = m.describe()
        assert not doc["unexplained"], (rnd, doc["unexplained"])
        assert all(i["state"] == "mounted" for i in doc["instances"]), (rnd, doc["instances"])
        assert len(doc["daemons"]) == 1
        assert served(doc) == sorted(mountpoints(doc)), (rnd, served(doc), doc["instances"])
        for k, mp in mountpoints(doc).items():
            r = read_uncached(os.path.join(mp, "hello.txt"))
            assert r.returncode == 0 and r.stdout == images[k].files["hello.txt"], (rnd, k)
    m.stop()


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
