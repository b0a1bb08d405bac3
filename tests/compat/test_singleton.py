"""The ``singleton`` daemon (fscache, spec §5, §2.2 and §3.4) over the cachefiles simulator
(this kernel has no cachefiles on-demand): the blob API with good and bad entries, the
snapshotter's mount and unmount order, FUSE endpoints refused with 501, crash detection on
a busy device, and a hot upgrade with reads going on."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Dict

import pytest

from nydus_hybrid.lifecycle import upgrade
from nydus_hybrid.lifecycle.supervisor import Supervisor
from nydus_hybrid.mounts import erofs, fscache
from tests.helpers.daemons import DAEMON, ApiClient, BuiltImage, is_mounted
from tests.helpers.load import ReadLoad
from tests.helpers.singleton import Singleton, assert_image, assert_unregistered_mount_fails, entry, umount_under

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not erofs.erofs_available(),
    reason="fscache instances are EROFS mounts: needs root and file-backed EROFS",
)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return BuiltImage(tmp_path_factory.mktemp("singleton-image"), tag="s")


def _wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def daemon(tmp_path, sim):
    d = Singleton(tmp_path / "d")
    yield d
    umount_under(tmp_path)
    d.stop()


def test_bind_mount_read_unbind(daemon, image, tmp_path, sim):
    c = daemon.client()
    info = c.get("/api/v1/daemon").body
    assert info["state"] == "RUNNING" and info["backend_collection"] is None
    c.put("/api/v2/blobs", entry(image, "f1", tmp_path / "w1"))
    listed = c.get("/api/v2/blobs?domain_id=f1").body
    assert [e["id"] for e in listed] == ["f1"] and listed[0]["config_v2"]["backend"]["type"] == "localfs"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fscache.mount_erofs_fscache(str(mnt), "f1")
    try:
        assert_image(mnt, image)
        m = c.get("/api/v1/metrics/blobcache").body["fscache"]
        assert m["reads"] > 0 and m["read_errors"] == 0 and m["opens"] >= 2  # bootstrap + blob
    finally:
        fscache.umount_erofs_fscache(str(mnt))
    assert not is_mounted(mnt)
    assert c.delete("/api/v2/blobs?domain_id=f1").status == 204
    assert c.get("/api/v2/blobs?domain_id=f1").body == []
    r = c.delete("/api/v2/blobs?domain_id=f1&blob_id=f1", check=False)
    assert r.status == 500 and "No such file or directory" in r.body["message"]
    assert sim.status()["counters"]["protocol_errors"] == 0


def test_mount_of_an_unregistered_id_fails_cleanly(daemon, tmp_path, sim):
    assert_unregistered_mount_fails(daemon, tmp_path / "mnt")


@pytest.mark.parametrize(
    "mutate,status,needle",
    [
        (lambda e: e.pop("config"), 400, "config_v2"),
        (lambda e: e["config"].pop("backend_type"), 400, "backend_type"),
        (lambda e: e["config"].update(prefetch_config={"enable": True}), 400, "prefetch_config"),
        (lambda e: e.update(type="datablob"), 500, "bootstrap"),
        (lambda e: e.update(id="a/b"), 500, "'/'"),
        (lambda e: e["config"].update(metadata_path="/nonexistent"), 500, "regular file"),
        (lambda e: e["config"].update(cache_type="blobcache"), 500, "cache type"),
        (lambda e: e["config"]["cache_config"].update(work_dir="/nonexistent"), 500, "work_dir"),
    ],
)
def test_bad_entries_are_refused(daemon, image, tmp_path, mutate, status, needle):
    e = entry(image, "bad", tmp_path / "w")
    mutate(e)
    r = daemon.client().put("/api/v2/blobs", e, check=False)
    assert r.status == status and needle in r.body["message"], r.body
    assert daemon.client().get("/api/v2/blobs?domain_id=").body == []


def test_corrupt_bootstrap_and_duplicates(daemon, image, tmp_path):
    c = daemon.client()
    bad = tmp_path / "corrupt.boot"
    raw = bytearray(image.boot.read_bytes())
    raw[1024:1028] = b"\0\0\0\0"  # the EROFS magic
    bad.write_bytes(bytes(raw))
    e = entry(image, "c1", tmp_path / "w")
    e["config"]["metadata_path"] = str(bad)
    r = c.put("/api/v2/blobs", e, check=False)
    assert r.status == 500 and "blob_cache" in r.body["message"]
    c.put("/api/v2/blobs", entry(image, "ok", tmp_path / "w"))
    r = c.put("/api/v2/blobs", entry(image, "ok", tmp_path / "w"), check=False)
    assert r.status == 500 and "already exists" in r.body["message"]
    r = c.request("PUT", "/api/v2/blobs", raw=b"{not json", check=False)
    assert r.status == 400
    assert c.delete("/api/v2/blobs", check=False).status == 400


def test_fuse_endpoints_are_501_on_a_singleton(daemon):
    c = daemon.client()
    body = {"fs_type": "rafs", "source": "/x", "config": "{}"}
    assert c.post("/api/v1/mount?mountpoint=/a", body, check=False).status == 501
    assert c.get("/api/v1/metrics/inflight", check=False).status == 501
    assert c.get("/api/v1/daemon/backend?mountpoint=/a", check=False).status == 501


def test_blob_api_on_a_fuse_daemon(tmp_path, image):
    from tests.helpers.daemons import Daemon, v1_config

    d = Daemon(tmp_path / "fuse", config=v1_config("/", image.blobs, tmp_path / "c"), bootstrap=image.boot)
    try:
        c = d.client()
        assert c.put("/api/v2/blobs", entry(image, "x", tmp_path / "w"), check=False).status == 501
        assert c.delete("/api/v2/blobs?blob_id=x", check=False).status == 204  # cull: a no-op there
    finally:
        d.cleanup()


def test_second_daemon_on_a_busy_device_exits(daemon, tmp_path):
    other = tmp_path / "other"
    (other / "cache").mkdir(parents=True)
    r = subprocess.run(
        [*DAEMON, "singleton", "--fscache", str(other / "cache"), "--apisock", str(other / "api.sock")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "another daemon is running" in r.stderr


UPGRADE_ROUNDS = int(os.environ.get("NYDUS_UPGRADE_ROUNDS", "3"))


def test_hot_upgrades_under_reads(tmp_path, image, sim):
    """Hot upgrades one after another while readers go through five cold mounts, so READs
    and reopens are under way when a successor restores and its predecessor exits."""
    sup = Supervisor(str(tmp_path / "sup.sock")).start()
    d = Singleton(tmp_path / "d", extra=["--id", "s1", "--supervisor", sup.path])
    mnts = [tmp_path / f"mnt{i}" for i in range(5)]
    procs, sock = [d.proc], d.sock
    try:
        for i, mnt in enumerate(mnts):
            d.client().put("/api/v2/blobs", entry(image, f"u{i}", tmp_path / f"w{i}"))
            mnt.mkdir()
            fscache.mount_erofs_fscache(str(mnt), f"u{i}")
        with ReadLoad([str(m) for m in mnts], image.files, readers=3, listers=1) as load:
            load.wait_reads(3)
            for _ in range(UPGRADE_ROUNDS):
                new_sock = upgrade.next_apisock(sock)
                procs.append(
                    upgrade.hot_upgrade(sock, sup, new_apisock=new_sock, log_path=str(tmp_path / "new.log")).process
                )
                sock = new_sock
                load.wait_reads(5)
        assert not load.errors, load.errors[:5]
        assert all(p.wait(10) == 0 for p in procs[:-1]), "each predecessor exited cleanly"
        c = ApiClient(sock)
        assert c.get("/api/v1/daemon").body["state"] == "RUNNING"
        assert sorted(e["id"] for e in c.get("/api/v2/blobs?domain_id=").body) == [f"u{i}" for i in range(5)]
        st = sim.status()["counters"]
        assert st["restores"] == UPGRADE_ROUNDS and st["eio"] == 0 and st["protocol_errors"] == 0, st
        for mnt in mnts:
            assert_image(mnt, image)
    finally:
        for mnt in mnts:
            if is_mounted(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        for p in procs[1:]:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        d.stop()
        sup.close()


def test_a_shared_domain_counts_its_data_blobs(daemon, image, tmp_path):
    """Two bootstraps of one domain share their data blob (one entry, two references); the
    blob goes when the last bootstrap does (spec §5.7)."""
    c = daemon.client()
    c.put("/api/v2/blobs", entry(image, "b1", tmp_path / "w1", domain="shared"))
    c.put("/api/v2/blobs", entry(image, "b2", tmp_path / "w2", domain="shared"))

    def refs():
        return c.get("/api/v1/metrics/blobcache").body["fscache"]["data_blobs"]

    assert list(refs().values()) == [2] and all(k.startswith("shared/") for k in refs())
    assert sorted(e["id"] for e in c.get("/api/v2/blobs?domain_id=shared").body) == ["b1", "b2"]
    c.delete("/api/v2/blobs?domain_id=shared&blob_id=b1")
    assert list(refs().values()) == [1]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fscache.mount_erofs_fscache(str(mnt), "b2", "shared")
    try:
        assert_image(mnt, image)
    finally:
        fscache.umount_erofs_fscache(str(mnt))
    c.delete("/api/v2/blobs?domain_id=shared")
    assert refs() == {} and c.get("/api/v2/blobs?domain_id=shared").body == []


FUZZ_EXAMPLES = int(os.environ.get("NYDUS_FUZZ_EXAMPLES", "150"))


def test_blob_api_fuzz(daemon, image, tmp_path, sim):
    """Random PUT, DELETE and GET requests on /api/v2/blobs, conforming or not: every answer
    is one openapi.yaml documents (ApiClient validates it), and an image mounted before
    still reads afterwards, its entry untouched."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    c = daemon.client()
    c.put("/api/v2/blobs", entry(image, "keep", tmp_path / "wk"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fscache.mount_erofs_fscache(str(mnt), "keep")
    names = st.text(st.sampled_from("ab/.%\x00é-"), max_size=6).filter(lambda n: n != "keep")
    leaves = st.none() | st.booleans() | st.integers() | names
    values = st.recursive(
        leaves, lambda k: st.lists(k, max_size=3) | st.dictionaries(names, k, max_size=3), max_leaves=8
    )
    good = st.builds(
        lambda i, d, t: dict(entry(image, i or "x", tmp_path / "wf"), domain_id=d, type=t),
        names,
        names,
        st.sampled_from(["bootstrap", "datablob", "other"]),
    )
    bodies = st.one_of(
        good,
        values,
        st.dictionaries(st.sampled_from(["type", "id", "domain_id", "config", "config_v2"]), values, max_size=5),
    )
    queries = st.lists(st.tuples(st.sampled_from(["domain_id", "blob_id", "x"]), names), max_size=3)

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(["PUT", "DELETE", "GET"]), bodies, queries, st.booleans())
    def one(method, body, query, garble):
        import urllib.parse

        url = "/api/v2/blobs?" + urllib.parse.urlencode(query)
        if method == "PUT":
            raw = json.dumps(body).encode()
            r = c.request("PUT", url, raw=raw[: len(raw) // 2] if garble else raw)
        else:
            r = c.request(method, url)
        assert r.status in (200, 204, 400, 500, 501), (method, url, r.status)
        if r.status >= 500:  # a handled failure, not an exception that escaped a handler
            assert not r.body["message"].startswith("Internal("), (method, url, r.body)
        statuses[r.status] = statuses.get(r.status, 0) + 1

    statuses: Dict[str, Any] = {}

    one()
    assert {200, 204, 400, 500} <= set(statuses), statuses  # the draws reach every outcome
    assert [e["id"] for e in c.get("/api/v2/blobs?domain_id=keep").body] == ["keep"]
    assert c.get("/api/v1/daemon").body["state"] == "RUNNING"
    try:
        assert_image(mnt, image)
    finally:
        fscache.umount_erofs_fscache(str(mnt))


def test_prefetch_fills_the_cache_before_anyone_reads(daemon, image, tmp_path, sim):
    """The snapshotter's entries say prefetch_config.enable: once the kernel opens a data
    blob, the daemon fills it in the background, and reads then send no READ at all."""
    c = daemon.client()
    c.put("/api/v2/blobs", entry(image, "p1", tmp_path / "w", prefetch=True))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert c.get("/api/v1/metrics/blobcache").body["data_all_ready"] is False  # nothing opened yet
    fscache.mount_erofs_fscache(str(mnt), "p1")
    try:
        total = sum(len(d) for d in image.files.values())
        deadline = time.monotonic() + 20
        while c.get("/api/v1/metrics/blobcache").body["fscache"]["prefetch_bytes"] < total:
            assert time.monotonic() < deadline, c.get("/api/v1/metrics/blobcache").body["fscache"]
            time.sleep(0.05)
        _wait_for(lambda: c.get("/api/v1/metrics/blobcache").body["data_all_ready"])
        reads = sim.status()["counters"]["reads"]
        assert_image(mnt, image)
        assert sim.status()["counters"]["reads"] == reads, "everything was there already"
    finally:
        fscache.umount_erofs_fscache(str(mnt))


def test_config_lists_entries_to_register_at_start(tmp_path, image, sim):
    """`--config {"blobs": [...]}`: its config_v2 entries are registered before RUNNING; a
    legacy-only entry is skipped (nydusd does not convert those there); a bad file is one
    line and exit 1."""
    legacy = entry(image, "legacy", tmp_path / "wl")
    v2 = {
        "type": "bootstrap",
        "id": "v2",
        "domain_id": "v2",
        "config_v2": {
            "version": 2,
            "id": "v2",
            "metadata_path": str(image.boot),
            "backend": {"type": "localfs", "localfs": {"dir": str(image.blobs)}},
            "cache": {"type": "fscache", "fscache": {"work_dir": str(tmp_path)}},
        },
    }
    cfg = tmp_path / "blobs.json"
    cfg.write_text(json.dumps({"blobs": [legacy, v2]}))
    d = Singleton(tmp_path / "d", extra=["--config", str(cfg)])
    try:
        assert [e["id"] for e in d.client().get("/api/v2/blobs?domain_id=").body] == ["v2"]
    finally:
        d.stop()
    cfg.write_text("{not json")
    (tmp_path / "e" / "cache").mkdir(parents=True)
    r = subprocess.run(
        [
            *DAEMON,
            "singleton",
            "--fscache",
            str(tmp_path / "e" / "cache"),
            "--config",
            str(cfg),
            "--apisock",
            str(tmp_path / "e" / "api.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and str(cfg) in r.stderr, r.stderr
