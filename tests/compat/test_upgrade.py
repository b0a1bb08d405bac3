"""Hot upgrade and crash failover (spec §4), driven the way nydus-snapshotter drives them:
our supervisor holds the FUSE fd, the daemon hands over with sendfd, a successor takes over
(sequence B with --upgrade and the next apiN.sock; sequence C with the same arguments after a
kill -9). All of it under a continuous read load that must never see a failed read, wrong
bytes, ENOTCONN or ESTALE, and a mount that never goes away.

Rounds: NYDUS_UPGRADE_ROUNDS (default 20 upgrades and 20 failovers, as the issue asks) and
NYDUS_SHARED_ROUNDS (default 5 each)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import pytest

from nydus_hybrid.lifecycle import failover, handover, successor, upgrade
from nydus_hybrid.lifecycle import supervisor as nsup
from nydus_hybrid.lifecycle.supervisor import PUSH_ENV, Supervisor
from tests.helpers.daemons import ApiClient, BuiltImage, Daemon, is_mounted, lazy_umount, mount_cmd, v1_config
from tests.helpers.load import ReadLoad

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="the daemon mounts FUSE: needs root and /dev/fuse"
)

ROUNDS = int(os.environ.get("NYDUS_UPGRADE_ROUNDS", "20"))
SHARED_ROUNDS = int(os.environ.get("NYDUS_SHARED_ROUNDS", "5"))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> BuiltImage:
    return BuiltImage(tmp_path_factory.mktemp("upgrade-image"), tag="u")


class Fleet:
    """The daemon serving one mount across replacements: the first one (a test Daemon) and
    each successor (a Popen from nydus_hybrid.upgrade); cleans up whichever is last."""

    def __init__(self, first: Daemon):
        self.first = first
        self.apisock = first.sock
        self.argv = list(first.argv)
        self.procs: List[subprocess.Popen[bytes]] = []

    def pid(self) -> int:
        return upgrade.daemon_pid(self.apisock)

    def adopt(self, r: upgrade.Replacement) -> None:
        self.apisock = r.apisock
        self.procs.append(r.process)

    def client(self) -> ApiClient:
        return ApiClient(self.apisock)

    def cleanup(self) -> None:
        try:
            os.kill(self.pid(), signal.SIGTERM)
        except (upgrade.UpgradeError, ProcessLookupError):
            pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.first.cleanup()


@pytest.fixture(autouse=True)
def supervisor_takes_pushes(monkeypatch):
    """These tests drive our own Supervisor, which takes pushes, as the manager does: the
    daemons (and their successors, which inherit it) are told so."""
    monkeypatch.setenv(PUSH_ENV, "1")


def start(workdir: Path, sup: Supervisor, *, config=None, bootstrap=None) -> Fleet:
    d = Daemon(workdir, config=config, bootstrap=bootstrap, extra=["--id", "d1", "--supervisor", sup.path])
    assert sup.wait_for_state(0), "a daemon with --supervisor pushes its state once FUSE is initialized"
    return Fleet(d)


def kill_and_fail_over(fleet: Fleet, sup: Supervisor, log: Path) -> upgrade.Replacement:
    pid = fleet.pid()
    os.kill(pid, signal.SIGKILL)
    _wait_dead(pid)
    r = failover.failover(fleet.argv, fleet.apisock, sup, log_path=str(log))
    fleet.adopt(r)
    return r


def _wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.005)
    raise AssertionError(f"pid {pid} still alive")


def stored_state(sup: Supervisor) -> Tuple[bytes, int]:
    """The state (bytes, fd) the supervisor holds; it must hold one."""
    state = sup.state()
    assert state is not None, "the supervisor holds no state"
    return state


def assert_clean(load: ReadLoad, what: str) -> None:
    assert not load.errors, f"{what}: {len(load.errors)} failed reads, first: {load.errors[:5]}"


# --- dedicated mode ------------------------------------------------------------------------


def test_upgrades_then_failovers_under_load(image, tmp_path):
    with Supervisor(str(tmp_path / "supervisor" / "d1.sock")) as sup:
        cfg = v1_config("/", image.blobs, tmp_path / "cache")
        fleet = start(tmp_path / "d", sup, config=cfg, bootstrap=image.boot)
        mnt = fleet.first.mnt
        try:
            with ReadLoad([mnt], image.files, readers=4) as load:
                load.wait_reads(20)
                upgrade_stalls, failover_stalls = [], []
                for i in range(ROUNDS):
                    t0 = time.monotonic()
                    r = upgrade.hot_upgrade(fleet.apisock, sup, log_path=str(tmp_path / f"upgrade{i}.log"))
                    fleet.adopt(r)
                    assert r.apisock.endswith(f"api{i + 1}.sock")
                    assert is_mounted(mnt)
                    load.wait_reads(8)
                    upgrade_stalls.append(load.longest_stall(t0, time.monotonic()))
                    assert_clean(load, f"upgrade {i}")
                    # the new daemon reports RUNNING and still knows its instance
                    info = fleet.client().get("/api/v1/daemon").body
                    assert info["state"] == "RUNNING" and list(info["backend_collection"]) == ["/"]
                for i in range(ROUNDS):
                    t0 = time.monotonic()
                    kill_and_fail_over(fleet, sup, tmp_path / f"failover{i}.log")
                    assert is_mounted(mnt)
                    load.wait_reads(8)
                    failover_stalls.append(load.longest_stall(t0, time.monotonic()))
                    assert_clean(load, f"failover {i}")
            assert_clean(load, "the whole run")
            assert load.listings > 0
            print(
                f"\nlongest stall: upgrade {max(upgrade_stalls) * 1000:.0f} ms, "
                f"failover {max(failover_stalls) * 1000:.0f} ms over {ROUNDS}+{ROUNDS} rounds, "
                f"{len(load.reads)} reads"
            )
            # metrics still come from the Rust core after all the handovers
            fs = fleet.client().get("/api/v1/metrics").body
            assert fs["data_read"] > 0
        finally:
            fleet.cleanup()
    assert not is_mounted(mnt), "SIGTERM to the last daemon unmounts"


# --- shared mode ---------------------------------------------------------------------------


def test_shared_daemon_three_instances_upgrades_and_failovers(image, tmp_path):
    with Supervisor(str(tmp_path / "supervisor" / "shared.sock")) as sup:
        fleet = start(tmp_path / "d", sup)
        mnt = fleet.first.mnt
        try:
            c = fleet.client()
            for sid in ("s1", "s2", "s3"):
                gen = sup.generation
                body = mount_cmd(image.boot, v1_config(f"/{sid}", image.blobs, tmp_path / f"cache-{sid}"))
                assert c.post(f"http://unix/api/v1/mount?mountpoint=%2F{sid}", body).status == 204
                assert sup.wait_for_state(gen), "every mount pushes the state again"
            c.close()
            doc = handover.decode(stored_state(sup)[0])
            assert sorted(m["mountpoint"] for m in doc["mounts"]) == ["/s1", "/s2", "/s3"]
            roots = [mnt / s for s in ("s1", "s2", "s3")]
            with ReadLoad(roots, image.files, readers=4) as load:
                load.wait_reads(20)
                for i in range(SHARED_ROUNDS):
                    fleet.adopt(upgrade.hot_upgrade(fleet.apisock, sup, log_path=str(tmp_path / f"upgrade{i}.log")))
                    load.wait_reads(12)
                    assert_clean(load, f"shared upgrade {i}")
                for i in range(SHARED_ROUNDS):
                    kill_and_fail_over(fleet, sup, tmp_path / f"failover{i}.log")
                    load.wait_reads(12)
                    assert_clean(load, f"shared failover {i}")
            assert_clean(load, "the shared run")
            c = fleet.client()
            info = c.get("http://unix/api/v1/daemon").body
            assert sorted(info["backend_collection"]) == ["/s1", "/s2", "/s3"]
            # the snapshotter's RecoverRafsInstances re-issues each mount: identical is fine,
            # a different source for a taken path is not
            same = mount_cmd(image.boot, v1_config("/s1", image.blobs, tmp_path / "cache-s1"))
            assert c.post("http://unix/api/v1/mount?mountpoint=%2Fs1", same).status == 204
            other = mount_cmd(image.boot, v1_config("/s1", image.blobs, tmp_path / "elsewhere"))
            r = c.post("http://unix/api/v1/mount?mountpoint=%2Fs1", other)
            assert r.status == 500 and "already exists" in r.body["message"]
            # the restored daemon manages its instances as before: umount one, and it is gone
            gen = sup.generation
            assert c.delete("http://unix/api/v1/mount?mountpoint=%2Fs2").status == 204
            assert sup.wait_for_state(gen), "an umount pushes the state again"
            assert [m["mountpoint"] for m in handover.decode(stored_state(sup)[0])["mounts"]] == ["/s1", "/s3"]
            assert sorted(os.listdir(mnt)) == ["s1", "s3"]
            c.close()
        finally:
            fleet.cleanup()


# --- a takeover that cannot happen ---------------------------------------------------------


class FakeSupervisor:
    """Serves fixed bytes (and optionally an fd) to one connection: a corrupt supervisor."""

    def __init__(self, path: str, data: bytes, fd):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.data, self.fd = data, fd

    def serve_once(self) -> None:
        import threading

        def run():
            self.sock.settimeout(15)
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.fd is None:
                    conn.sendall(self.data)
                else:
                    nsup._send(conn, self.data, self.fd)

        threading.Thread(target=run, daemon=True).start()

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)


def _corruptions(good: bytes):
    doc = handover.decode(good)
    newer = bytearray(good)
    newer[8:12] = (handover.STATE_VERSION + 1).to_bytes(4, "little")
    flipped = bytearray(good)
    flipped[40] ^= 0xFF
    other_mnt = dict(doc, daemon=dict(doc["daemon"], mountpoint="/somewhere/else"))
    missing_source = dict(doc, mounts=[dict(doc["mounts"][0], source="/no/such/bootstrap")])
    return {
        "truncated": (good[: len(good) // 2], True, "truncated"),
        # an fd cannot travel without at least one byte of data on a stream socket
        "empty": (b"", True, "no control file descriptor"),
        "header-only": (good[:20], True, "truncated"),
        "garbage": (os.urandom(300), True, "bad magic"),
        "bit-flip": (bytes(flipped), True, "checksum"),
        "newer-version": (bytes(newer), True, "newer than this daemon"),
        "other-mountpoint": (handover.encode(other_mnt), True, "the state is for /somewhere/else"),
        "missing-bootstrap": (handover.encode(missing_source), True, "does not exist"),
        "no-fd": (good, False, "no control file descriptor"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "empty",
        "header-only",
        "garbage",
        "bit-flip",
        "newer-version",
        "other-mountpoint",
        "missing-bootstrap",
        "no-fd",
        "no-supervisor",
    ],
)
def test_failed_takeover_leaves_the_old_daemon_serving(image, tmp_path, case):
    with Supervisor(str(tmp_path / "sup.sock")) as sup:
        fleet = start(tmp_path / "d", sup, config=v1_config("/", image.blobs, tmp_path / "cache"), bootstrap=image.boot)
        mnt = fleet.first.mnt
        fake = None
        new = None
        try:
            good, fd = stored_state(sup)
            fake_path = str(tmp_path / "fake.sock")
            if case != "no-supervisor":
                data, with_fd, expect = _corruptions(good)[case]
                fake = FakeSupervisor(fake_path, data, fd if with_fd else None)
                fake.serve_once()
            else:
                expect = "fake.sock"
            apisock = str(tmp_path / "d" / "api1.sock")
            argv = successor.with_apisock(fleet.argv, apisock, upgrade=True)
            argv[argv.index("--supervisor") + 1] = fake_path
            log = open(tmp_path / "new.log", "wb")
            new = subprocess.Popen(argv, stdout=log, stderr=log)
            c = ApiClient(apisock)
            _wait_for(lambda: os.path.exists(apisock))
            assert c.get("/api/v1/daemon").body["state"] == "INIT"
            with ReadLoad([mnt], image.files, readers=2, listers=0) as load:
                r = c.put("/api/v1/daemon/fuse/takeover")
                assert r.status == 500, r
                assert expect in r.body["message"], r.body
                # the new daemon stays INIT, alive, answering
                assert c.get("/api/v1/daemon").body["state"] == "INIT"
                assert new.poll() is None
                load.wait_reads(10)
            assert_clean(load, case)
            assert is_mounted(mnt)
            # the old daemon is untouched and can still hand over for real
            assert fleet.client().get("/api/v1/daemon").body["state"] == "RUNNING"
            c.close()
        finally:
            if new is not None:
                new.kill()
                new.wait()
            if fake is not None:
                fake.close()
            fleet.cleanup()


def _wait_for(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_takeover_and_sendfd_refusals(image, tmp_path):
    """sendfd without a supervisor: 501 (nydusd panics here); takeover on a RUNNING daemon:
    400 and nothing changes; in INIT, start is 400 and sendfd 503 (nothing to hand over); a
    takeover in INIT without --supervisor: 500."""
    d = Daemon(tmp_path / "d", config=v1_config("/", image.blobs, tmp_path / "cache"), bootstrap=image.boot)
    try:
        c = d.client()
        r = c.put("/api/v1/daemon/fuse/sendfd")
        assert r.status == 501 and "MissingSupervisorPath" in r.body["message"]
        r = c.put("/api/v1/daemon/fuse/takeover")
        assert r.status == 400 and "UnexpectedEvent" in r.body["message"]
        assert c.get("/api/v1/daemon").body["state"] == "RUNNING"
        c.close()
    finally:
        d.cleanup()
    with Supervisor(str(tmp_path / "sup.sock")) as sup:
        fleet = start(
            tmp_path / "e", sup, config=v1_config("/", image.blobs, tmp_path / "cache2"), bootstrap=image.boot
        )
        try:
            c = fleet.client()
            r = c.put("/api/v1/daemon/fuse/takeover")
            assert r.status == 400 and "UnexpectedEvent" in r.body["message"]
            c.close()
            apisock = str(tmp_path / "e" / "api1.sock")
            new = subprocess.Popen(
                successor.with_apisock(fleet.argv, apisock, upgrade=True),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait_for(lambda: os.path.exists(apisock))
                n = ApiClient(apisock)
                assert n.put("/api/v1/daemon/start").status == 400  # INIT -> start is illegal
                assert n.put("/api/v1/daemon/fuse/sendfd").status == 503  # nothing to hand over yet
                assert n.get("/api/v1/daemon").body["state"] == "INIT"
                n.close()
            finally:
                new.kill()
                new.wait()
            # --upgrade without --supervisor: INIT, and a takeover has nowhere to turn
            lone_sock = str(tmp_path / "e" / "lone.sock")
            lone_argv = successor.with_apisock(fleet.argv, lone_sock, upgrade=True)
            i = lone_argv.index("--supervisor")
            del lone_argv[i : i + 2]
            j = lone_argv.index("--id")
            del lone_argv[j : j + 2]
            lone = subprocess.Popen(lone_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_for(lambda: os.path.exists(lone_sock))
                n = ApiClient(lone_sock)
                r = n.put("/api/v1/daemon/fuse/takeover")
                assert r.status == 500 and "MissingSupervisorPath" in r.body["message"], r
                assert n.get("/api/v1/daemon").body["state"] == "INIT"
                n.close()
            finally:
                lone.kill()
                lone.wait()
        finally:
            fleet.cleanup()


# --- the supervisor itself -----------------------------------------------------------------


def test_supervisor_restart_loses_nothing(image, tmp_path):
    path = str(tmp_path / "sup.sock")
    sup = Supervisor(path).start()
    fleet = start(tmp_path / "d", sup, config=v1_config("/", image.blobs, tmp_path / "cache"), bootstrap=image.boot)
    mnt = fleet.first.mnt
    try:
        with ReadLoad([mnt], image.files, readers=4) as load:
            load.wait_reads(10)
            sup.close()  # the supervisor goes away with its copy of the state and fd
            sup = Supervisor(path).start()
            assert sup.state() is None
            gen = sup.generation
            c = fleet.client()
            assert c.put("/api/v1/daemon/fuse/sendfd").status == 204  # what a restarted snapshotter does
            c.close()
            # the 204 comes once the daemon has sent; the supervisor stores it on its own thread
            assert sup.wait_for_state(gen) and sup.state() is not None
            kill_and_fail_over(fleet, sup, tmp_path / "failover.log")
            load.wait_reads(10)
        assert_clean(load, "after a supervisor restart")
    finally:
        fleet.cleanup()
        sup.close()


def test_cli_upgrade(image, tmp_path):
    """`nydus-hybrid upgrade --apisock`: for a daemon whose supervisor path nobody listens on,
    the command supervises the handover itself."""
    sup_path = str(tmp_path / "sup.sock")
    d = Daemon(
        tmp_path / "d",
        config=v1_config("/", image.blobs, tmp_path / "cache"),
        bootstrap=image.boot,
        extra=["--id", "d1", "--supervisor", sup_path],
    )
    new_pid = None
    try:
        with ReadLoad([d.mnt], image.files, readers=2) as load:
            load.wait_reads(10)
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "nydus_hybrid",
                    "upgrade",
                    "--apisock",
                    d.sock,
                    "--json",
                    "--log-file",
                    str(tmp_path / "new.log"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            new_pid = out["pid"]
            assert out["apisock"] == str(tmp_path / "d" / "api1.sock")
            d.wait(10)  # the old daemon exited
            load.wait_reads(10)
        assert_clean(load, "CLI upgrade")
        c = ApiClient(out["apisock"])
        assert c.get("/api/v1/daemon").body["state"] == "RUNNING"
        c.close()
        # a daemon without --supervisor cannot be upgraded: one line, exit 1
        bad = subprocess.run(
            [sys.executable, "-m", "nydus_hybrid", "upgrade", "--apisock", str(tmp_path / "nope.sock")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    finally:
        if new_pid:
            os.kill(new_pid, signal.SIGTERM)
            _wait_for(lambda: not is_mounted(d.mnt))
        d.cleanup()
        lazy_umount(d.mnt)
