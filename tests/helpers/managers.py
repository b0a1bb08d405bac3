"""Helpers for the daemon manager's tests (tests/compat/test_manager.py with the fuse driver,
tests/compat/test_manager_fscache.py with the fscache driver): a real manager process
(`python -m nydus_hybrid.manager`) and a client for its system.sock, waiting, reading every
file through a mount, cleaning up what the store knows, and the kill scenarios both
drivers run. Sizes: NYDUS_MANAGER_KILL_ROUNDS (default 20)."""

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
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence

from nydus_hybrid.client import DaemonApiError, DaemonClient
from nydus_hybrid.waits import scaled
from tests.helpers.daemons import BuiltImage, lazy_umount, read_uncached, v1_config
from tests.helpers.load import ReadLoad

KILL_ROUNDS = int(os.environ.get("NYDUS_MANAGER_KILL_ROUNDS", "20"))
KEYS = ("img1", "img2", "img3")


class ManagerProc:
    """`python -m nydus_hybrid.manager` and a client for its system.sock."""

    proc: Optional[subprocess.Popen[bytes]]
    log: IO[bytes]

    def __init__(
        self, root: Path, mode: str, policy: str, nydusd: Optional[str] = None, extra: Sequence[str] = ()
    ) -> None:
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

    def started(self) -> subprocess.Popen[bytes]:
        """The manager process (start() was called)."""
        assert self.proc is not None, "the manager was not started"
        return self.proc

    def wait_ready(self, timeout: float = 30.0) -> None:
        proc = self.started()
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"manager exited with {proc.returncode}: {self.log_tail()}")
            try:
                self.get("/api/v1/daemons")
                return
            except (OSError, DaemonApiError):
                time.sleep(0.05)
        raise AssertionError(f"manager not ready: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        """The end of the manager's log and of each daemon's, for a failure message."""
        self.log.flush()
        parts = [Path(self.log.name).read_text(errors="replace")[-n:]]
        for f in sorted((self.root / "logs").glob("*/*.log")):
            parts.append(f"--- {f}:\n" + f.read_text(errors="replace")[-n:])
        return "\n".join(parts)

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None, timeout: float = 60.0) -> Any:
        c = DaemonClient(str(self.root / "system.sock"), timeout=timeout)
        try:
            return c.request(method, path, body)
        finally:
            c.close()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def mount(self, key: str, img: BuiltImage) -> Any:
        cfg = v1_config(f"/{key}", img.blobs, self.root.parent / f"cache-{key}")
        return self.request(
            "POST",
            "/api/v1/instances",
            {"snapshot_id": key, "image_id": key, "bootstrap": str(img.boot), "config": cfg},
        )

    def umount(self, key: str) -> Any:
        return self.request("DELETE", f"/api/v1/instances/{key}")

    def describe(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = self.get("/api/v1/daemons")
        return doc

    def kill(self) -> None:
        proc = self.started()
        proc.kill()
        proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()


def daemon_pids(doc: Mapping[str, Any]) -> Dict[str, int]:
    return {d["id"]: d["pid"] for d in doc["daemons"]}


def mountpoints(doc: Mapping[str, Any]) -> Dict[str, str]:
    return {i["snapshot_id"]: i["mountpoint"] for i in doc["instances"]}


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


def assert_readable(mountpoint: str, img: BuiltImage) -> None:
    for rel, data in img.files.items():
        r = read_uncached(os.path.join(mountpoint, rel))
        assert r.returncode == 0 and r.stdout == data, (mountpoint, rel, r.stderr[-300:])


def wait_until(cond: Callable[[], object], timeout: float = 30.0, explain: Callable[[], str] = str) -> None:
    """Poll `cond` until it is true; errors of a manager or daemon not answering yet (and a
    daemon not in the answer yet) count as false."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        try:
            if cond():
                return
        except (OSError, DaemonApiError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting {explain()}")
        time.sleep(0.05)


def kill_daemons_twice_under_reads(
    m: ManagerProc, images: Mapping[str, BuiltImage], readers: int = 4, listers: int = 1
) -> None:
    """Three images mounted; `readers` on one and `listers` on all while every daemon is
    killed -9, twice: no read and no listing may fail. (The VM's tests use no lister: an
    `ls` process loads its binary over the guest's slow 9p root.)"""
    for k in KEYS:
        m.mount(k, images[k])
    mps = mountpoints(m.describe())
    with (
        ReadLoad([mps[k] for k in KEYS], images["img1"].files, readers=0, listers=listers) as lister,
        ReadLoad([mps["img1"]], images["img1"].files, readers=readers, listers=0) as load,
    ):
        load.wait_reads(20)
        for _ in range(2):
            pids = daemon_pids(m.describe())
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)

            def all_replaced(pids: Dict[str, int] = pids) -> bool:
                return all(p not in pids.values() for p in daemon_pids(m.describe()).values())

            wait_until(all_replaced, explain=m.log_tail)
            load.wait_reads(20)
    assert not load.errors, load.errors[:5]
    assert not lister.errors, lister.errors[:5]


def fuse_served(doc: Mapping[str, Any]) -> List[str]:
    """The instances the (one, shared) fuse daemon serves."""
    d = doc["daemons"][0]
    return sorted(k.lstrip("/") for k in DaemonClient(d["api_socket"]).get("/api/v1/daemon")["backend_collection"])


def kill_at_random_points(
    images: Mapping[str, BuiltImage],
    root: Path,
    rounds: int,
    extra: Sequence[str] = (),
    served: Callable[[Dict[str, Any]], List[str]] = fuse_served,
) -> None:
    """Mounts and umounts in a loop, the manager killed -9 at a random moment, restarted:
    the store opens, nothing is unexplained, every recorded instance is mounted and served,
    and reads."""
    rng = random.Random(7)
    m = ManagerProc(root, "shared", "failover", extra=extra).start()
    for rnd in range(rounds):
        stop = threading.Event()

        def churn(m: ManagerProc, stop: threading.Event) -> None:
            while not stop.is_set():
                k = rng.choice(KEYS)
                try:
                    if rng.random() < 0.5:
                        m.mount(k, images[k])
                    else:
                        m.umount(k)
                except (OSError, DaemonApiError):
                    pass

        t = threading.Thread(target=churn, args=(m, stop))
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
