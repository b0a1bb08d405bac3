"""The fscache daemon on the real /dev/cachefiles (cachefiles on-demand) of the test kernel,
run in a VM by tests/vm/test_real_kernel.py: bind, EROFS mounts over fscache with every
file read back, prefetch, unmount and cull, restore after a kill -9, three images in one
domain, and a hot upgrade. The simulator's suites (tests/compat/test_singleton.py,
tests/compat/test_manager_fscache.py) model this kernel; here the kernel is the judge."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from nydus_hybrid.client import DaemonClient
from nydus_hybrid.lifecycle import upgrade
from nydus_hybrid.lifecycle.supervisor import Supervisor
from nydus_hybrid.mounts import fscache
from tests.helpers.daemons import ApiClient, BuiltImage, is_mounted
from tests.helpers.load import ReadLoad
from tests.helpers.managers import (
    KEYS,
    ManagerProc,
    assert_readable,
    kill_daemons_twice_under_reads,
    mountpoints,
    teardown,
    wait_until,
)
from tests.helpers.singleton import Singleton, assert_image, assert_unregistered_mount_fails, entry, umount_under


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, BuiltImage]:
    base = tmp_path_factory.mktemp("images")
    return {k: BuiltImage(base / k, tag=k) for k in KEYS}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Singleton]:
    d = Singleton(tmp_path / "d")
    yield d
    umount_under(tmp_path)
    d.stop()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    r = tmp_path / "root"
    yield r
    teardown(r)


def fscache_metrics(c: ApiClient) -> Dict[str, Any]:
    m: Dict[str, Any] = c.get("/api/v1/metrics/blobcache").body["fscache"]
    return m


def device_is_busy() -> bool:
    try:
        fd = os.open("/dev/cachefiles", os.O_RDWR)
    except OSError as e:
        assert e.errno == errno.EBUSY, e
        return True
    os.close(fd)
    return False


def test_bind_holds_the_device_until_the_daemon_exits(tmp_path: Path) -> None:
    d = Singleton(tmp_path / "d")
    try:
        assert d.client().get("/api/v1/daemon").body["state"] == "RUNNING"
        assert device_is_busy(), "the kernel allows one cachefiles daemon: ours has it"
    finally:
        d.stop()
    assert d.proc.returncode == 0
    assert not device_is_busy(), "released on exit"


def test_mount_reads_every_file_then_umount_and_cull(
    daemon: Singleton, images: Dict[str, BuiltImage], tmp_path: Path
) -> None:
    img = images["img1"]
    c = daemon.client()
    c.put("/api/v2/blobs", entry(img, "f1", tmp_path / "w1"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = str(daemon.workdir / "cache")
    fscache.mount_erofs_fscache(str(mnt), "f1")
    try:
        assert_image(mnt, img)
        m = fscache_metrics(c)
        assert m["reads"] > 0 and m["read_errors"] == 0 and m["opens"] >= 2, m  # bootstrap + blob
        # a new object's file is an unnamed tmpfile until the kernel lets the object go
        assert not list(fscache.cache_files(cache, "f1")), sorted(_walk(cache))
    finally:
        fscache.umount_erofs_fscache(str(mnt))
    assert not is_mounted(mnt)
    # now named where we compute it: the cull must find it there
    named = sorted(_walk(cache))
    assert len(named) == 2, named  # the bootstrap's and the data blob's
    assert [os.path.relpath(p, cache) for p in fscache.cache_files(cache, "f1")] in ([n] for n in named)
    assert c.delete("/api/v2/blobs?blob_id=f1").status == 204
    assert not list(fscache.cache_files(cache, "f1")), "culled by the kernel"
    assert len(_walk(cache)) == 1, "the data blob's file is kept"
    assert c.delete("/api/v2/blobs?domain_id=f1").status == 204
    assert c.get("/api/v2/blobs?domain_id=f1").body == []


def _walk(d: str) -> List[str]:
    """The regular files below `d`, relative to it."""
    return [os.path.relpath(os.path.join(p, n), d) for p, _, names in os.walk(d) for n in names]


def test_cull_refuses_a_file_in_use(daemon: Singleton, images: Dict[str, BuiltImage], tmp_path: Path) -> None:
    c = daemon.client()
    c.put("/api/v2/blobs", entry(images["img1"], "busy", tmp_path / "w"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = str(daemon.workdir / "cache")
    fscache.mount_erofs_fscache(str(mnt), "busy")
    fscache.umount_erofs_fscache(str(mnt))  # the files get their names
    fscache.mount_erofs_fscache(str(mnt), "busy")  # and are used in place
    try:
        r = c.delete("/api/v2/blobs?blob_id=busy", check=False)
        assert r.status == 500 and "is in use" in r.body["message"], r.body
        assert list(fscache.cache_files(cache, "busy")), "still there"
        assert_image(mnt, images["img1"])
    finally:
        fscache.umount_erofs_fscache(str(mnt))
    assert c.delete("/api/v2/blobs?blob_id=busy").status == 204
    assert not list(fscache.cache_files(cache, "busy"))


def test_mount_of_an_unregistered_id_fails_cleanly(daemon: Singleton, tmp_path: Path) -> None:
    assert_unregistered_mount_fails(daemon, tmp_path / "mnt")


def test_prefetch_fills_the_cache_before_anyone_reads(
    daemon: Singleton, images: Dict[str, BuiltImage], tmp_path: Path
) -> None:
    img = images["img2"]
    c = daemon.client()
    c.put("/api/v2/blobs", entry(img, "p1", tmp_path / "w", prefetch=True))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fscache.mount_erofs_fscache(str(mnt), "p1")
    try:
        total = sum(len(d) for d in img.files.values())
        wait_until(lambda: fscache_metrics(c)["prefetch_bytes"] >= total, timeout=120)
        wait_until(lambda: c.get("/api/v1/metrics/blobcache").body["data_all_ready"], timeout=120)
        before = fscache_metrics(c)
        assert before["prefetch_errors"] == 0, before
        assert_image(mnt, img)
        after = fscache_metrics(c)
        # the data blob was all there: only the bootstrap's own object may still be read
        assert after["read_bytes"] - before["read_bytes"] < total // 4, (before, after)
    finally:
        fscache.umount_erofs_fscache(str(mnt))


def test_hot_upgrade_under_reads(images: Dict[str, BuiltImage], tmp_path: Path) -> None:
    """The device fd and the objects' anon fds go to a successor through the supervisor,
    which restores them on the kernel (`restore`): readers see no error."""
    img = images["img3"]
    sup = Supervisor(str(tmp_path / "sup.sock")).start()
    d = Singleton(tmp_path / "d", extra=["--id", "s1", "--supervisor", sup.path])
    mnt = tmp_path / "mnt"
    procs, sock = [d.proc], d.sock
    try:
        d.client().put("/api/v2/blobs", entry(img, "u1", tmp_path / "w"))
        mnt.mkdir()
        fscache.mount_erofs_fscache(str(mnt), "u1")
        with ReadLoad([str(mnt)], img.files, readers=2, listers=1) as load:
            load.wait_reads(3)
            for _ in range(2):
                new_sock = upgrade.next_apisock(sock)
                log = str(tmp_path / "new.log")
                procs.append(upgrade.hot_upgrade(sock, sup, new_apisock=new_sock, log_path=log).process)
                sock = new_sock
                load.wait_reads(3)
        assert not load.errors, load.errors[:5]
        assert all(p.wait(20) == 0 for p in procs[:-1]), "each predecessor exited cleanly"
        c = ApiClient(sock)
        assert c.get("/api/v1/daemon").body["state"] == "RUNNING"
        assert [e["id"] for e in c.get("/api/v2/blobs?domain_id=").body] == ["u1"]
        assert_image(mnt, img)
    finally:
        umount_under(tmp_path)
        for p in procs[1:]:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        d.stop()
        sup.close()


def manager(root: Path, *extra: str) -> ManagerProc:
    return ManagerProc(root, "shared", "failover", extra=["--fs-driver", "fscache", *extra]).start()


def entries(m: ManagerProc) -> List[Any]:
    c = DaemonClient(m.describe()["daemons"][0]["api_socket"], timeout=30)
    try:
        listed: List[Any] = c.get("/api/v2/blobs?domain_id=")
        return listed
    finally:
        c.close()


def test_restore_after_kill_9_of_the_daemon(images: Dict[str, BuiltImage], root: Path) -> None:
    """The manager holds the device fd (failover policy): a new daemon restores it, and
    reads under way while the daemon is killed twice never fail."""
    m = manager(root)
    try:
        kill_daemons_twice_under_reads(m, images, readers=3, listers=0)
        doc = m.describe()
        assert len(doc["daemons"]) == 1 and all(i["state"] == "mounted" for i in doc["instances"])
        assert len(entries(m)) == 3
        for k, mp in mountpoints(doc).items():
            assert_readable(mp, images[k])
    finally:
        m.stop()


def test_three_images_in_one_domain(images: Dict[str, BuiltImage], root: Path) -> None:
    m = manager(root, "--fscache-domain", "shared")
    try:
        for k in KEYS:
            rec = m.mount(k, images[k])
            assert rec["annotations"]["fscache.domainid"] == "shared"
            assert rec["annotations"]["fscache.id"] == hashlib.sha256(f"nydus-snapshot-{k}".encode()).hexdigest()
        assert {e["domain_id"] for e in entries(m)} == {"shared"} and len(entries(m)) == 3
        # one EROFS volume for the domain, in the kernel's cache directory
        assert [p.name for p in (root / "cache" / "cache").iterdir()] == ["Ierofs,shared"]
        doc = m.describe()
        for k, mp in mountpoints(doc).items():
            assert is_mounted(mp)
            assert_readable(mp, images[k])
        gone = mountpoints(doc)["img2"]
        m.umount("img2")
        doc = m.describe()
        assert sorted(mountpoints(doc)) == ["img1", "img3"] and not is_mounted(gone)
        assert len(entries(m)) == 2
        for k in ("img1", "img3"):
            assert_readable(mountpoints(doc)[k], images[k])
        m.umount("img1")
        m.umount("img3")
        assert entries(m) == []
    finally:
        m.stop()
