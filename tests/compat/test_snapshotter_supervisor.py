"""Our daemon under nydus-snapshotter's own supervisor protocol: one listener and one
connection per exchange, the state fetched with `sendfd` after every start, mount and umount,
hot upgrades and kill -9 failovers one after another while files are read. Only `sendfd` may
connect to such a supervisor; a state pushed on the daemon's own would take the connection
meant for a `sendfd`, which then fails. Sizes: NYDUS_ONESHOT_ROUNDS (default 20 upgrades and
20 failovers)."""

from __future__ import annotations

import functools
import json
import os
import urllib.parse

import pytest

from nydus_hybrid.lifecycle.supervisor import PUSH_ENV
from tests.helpers.daemons import ApiClient, BuiltImage, Daemon, mount_cmd, v1_config
from tests.helpers.load import ReadLoad
from tests.helpers.snapshotter import OneShotSupervisor, Snapshotter

ROUNDS = int(os.environ.get("NYDUS_ONESHOT_ROUNDS", "20"))

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="the daemon mounts FUSE: needs root and /dev/fuse"
)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> BuiltImage:
    return BuiltImage(tmp_path_factory.mktemp("oneshot-image"), tag="oneshot")


@pytest.fixture(autouse=True)
def no_push_opt_in(monkeypatch):
    """The snapshotter never sets our opt-in: its supervisor takes no pushes."""
    monkeypatch.delenv(PUSH_ENV, raising=False)


def mount(sock: str, at: str, image: BuiltImage, cache) -> None:
    c = ApiClient(sock)
    try:
        q = urllib.parse.quote(at, safe="")
        c.post(f"/api/v1/mount?mountpoint={q}", mount_cmd(image.boot, v1_config(at, image.blobs, cache)))
    finally:
        c.close()


def umount(sock: str, at: str) -> None:
    c = ApiClient(sock)
    try:
        c.delete(f"/api/v1/mount?mountpoint={urllib.parse.quote(at, safe='')}")
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["dedicated", "shared"])
def test_upgrades_and_failovers_with_a_one_shot_supervisor(image, tmp_path, mode):
    sup = OneShotSupervisor(str(tmp_path / "supervisor" / "d1.sock"))
    extra = ["--id", "d1", "--supervisor", sup.path]
    if mode == "dedicated":
        cfg = v1_config("/", image.blobs, tmp_path / "cache")
        d = Daemon(tmp_path / "d", config=cfg, bootstrap=image.boot, extra=extra)
        roots = [d.mnt]
    else:
        d = Daemon(tmp_path / "d", extra=extra)
        mount(d.sock, "/base", image, tmp_path / "cache")
        roots = [d.mnt / "base"]
    snap = Snapshotter(d.argv, d.sock, d.proc, sup)
    try:
        sup.send_states(snap.apisock)  # StartDaemon, once RUNNING (and SharedMount)
        with ReadLoad(roots, image.files, readers=2, listers=1) as load:
            for i in range(ROUNDS):
                if mode == "shared":
                    # a container comes and goes: SharedMount and SharedUmount each send states
                    mount(snap.apisock, f"/extra{i}", image, tmp_path / f"cache{i}")
                    sup.send_states(snap.apisock)
                    assert (d.mnt / f"extra{i}" / "hello.txt").read_bytes() == image.files["hello.txt"]
                    # two containers at once: one's umount while the other's SendStates waits
                    sup.send_states(snap.apisock, meanwhile=functools.partial(umount, snap.apisock, f"/extra{i}"))
                    sup.send_states(snap.apisock)
                snap.upgrade()
                load.wait_reads(3)
                snap.failover()
                load.wait_reads(3)
        assert not sup.failed_sendfds, f"{len(sup.failed_sendfds)} failed sendfds: {sup.failed_sendfds[:3]}"
        assert not load.errors, load.errors[:5]
        info = ApiClient(snap.apisock).get("/api/v1/daemon").body
        assert info["state"] == "RUNNING"
        want = ["/"] if mode == "dedicated" else ["/base"]
        assert sorted(info["backend_collection"]) == want, json.dumps(info)[:500]
        for rel, data in image.files.items():
            assert (roots[0] / rel).read_bytes() == data
    finally:
        snap.stop()
        d.cleanup()
        sup.close()
