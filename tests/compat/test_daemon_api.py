"""The daemon driven the way nydus-snapshotter drives nydusd (spec §1-3, §8-9): started as a
subprocess with nydusd's flags, spoken to over one keep-alive HTTP/1.1 connection on the
unix socket, every JSON answer checked against openapi.yaml, liveness watched through an
idle connection, and shut down by `exit` (mount kept) and SIGTERM (mount removed)."""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from typing import Any, Dict

import pytest

from tests.helpers.daemons import (
    BuiltImage,
    Daemon,
    daemon_version_commit,
    is_mounted,
    lazy_umount,
    mount_cmd,
    read_uncached,
    v1_config,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="the daemon mounts FUSE: needs root and /dev/fuse"
)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> BuiltImage:
    return BuiltImage(tmp_path_factory.mktemp("daemon-image"), tag="a")


@pytest.fixture(scope="module")
def image_b(tmp_path_factory) -> BuiltImage:
    return BuiltImage(tmp_path_factory.mktemp("daemon-image-b"), tag="b")


def start_dedicated(image: BuiltImage, workdir) -> Daemon:
    cfg = v1_config("/", image.blobs, workdir / "cache")
    return Daemon(workdir, config=cfg, bootstrap=image.boot)


@pytest.fixture
def dedicated(image, tmp_path):
    d = start_dedicated(image, tmp_path)
    yield d
    d.cleanup()


@pytest.fixture
def shared(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.cleanup()


def assert_files(root, files: Dict[str, Any]) -> None:
    for rel, data in files.items():
        r = read_uncached(os.path.join(root, rel))
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == data, rel


# --- dedicated mode --------------------------------------------------------------------------


def test_dedicated_daemon_like_the_snapshotter(dedicated, image):
    c = dedicated.client()
    try:
        info = c.get("http://unix/api/v1/daemon").body
        assert info["state"] == "RUNNING"
        assert info["version"]["git_commit"] == daemon_version_commit()
        assert list(info["backend_collection"]) == ["/"]
        assert info["backend_collection"]["/"]["backend_type"] == "Rafs"
        assert info["id"] is None and info["supervisor"] is None
        v2 = c.get("http://unix/api/v2/daemon").body
        assert v2["backend_collection"] is None and v2["state"] == "RUNNING"

        assert_files(dedicated.mnt, image.files)

        fs = c.get("http://unix/api/v1/metrics").body
        assert fs["id"] == "/"
        assert fs["data_read"] >= sum(len(d) for d in image.files.values())
        assert fs["fop_hits"][4] > 0  # read
        assert c.get("http://unix/api/v1/metrics?id=%2F").body["id"] == "/"
        bc = c.get("http://unix/api/v1/metrics/blobcache").body
        assert bc["store_path"] == str(dedicated.workdir / "cache")
        assert all(f.endswith(".blob.data") for f in bc["underlying_files"]) and bc["underlying_files"]
        assert c.get("http://unix/api/v1/metrics/blobcache?id=%2F").status == 200
        be = c.get("http://unix/api/v1/metrics/backend").body
        assert be["backend_type"] == "localfs" and be["read_count"] > 0
        assert c.get("http://unix/api/v1/metrics/inflight").status == 204
        assert c.get("http://unix/api/v1/metrics/files").body == {}
        assert c.get("http://unix/api/v1/metrics/files?latest=true").body == []
        assert c.get("http://unix/api/v1/metrics/pattern").body == []
        assert c.get("http://unix/api/v1/metrics?id=%2Fnope").status == 404
        assert c.get("http://unix/api/v1/metrics/blobcache?id=%2Fnope").status == 404
        meta = c.get("http://unix/api/v1/daemon/backend?mountpoint=%2F").body
        assert meta["magic"] == 0xE0F5E1E2 and meta["version"] == 0x600
        assert meta["inodes_count"] >= len(image.files) and meta["flags"]["bits"] > 0
        assert meta["attr_timeout"] == {"secs": 60, "nanos": 0} and meta["blobs"]
        prom = c.get("http://unix/api/v1/metrics/prometheus")
        assert prom.status == 200 and prom.headers["Content-Type"].startswith("text/plain")
        assert 'nydus_fop_hits_total{mountpoint="/",op="read"}' in prom.body

        # hot-reloaded registry credentials, keyed by the backend id "/"
        assert c.put("http://unix/api/v1/config?id=%2F", {"registry_auth": "dXNlcjpwYXNz"}).status == 204
        assert c.get("http://unix/api/v1/config?id=%2F").body == {"registry_auth": "dXNlcjpwYXNz"}
        assert c.get("http://unix/api/v1/config").body == {"/:registry_auth": "dXNlcjpwYXNz"}
        bad = c.put("http://unix/api/v1/config?id=%2F", {"no_such_key": "x"})
        assert bad.status == 500, bad
        assert c.get("http://unix/api/v1/config?id=%2F").body == {"registry_auth": "dXNlcjpwYXNz"}

        assert c.put("http://unix/api/v1/daemon", {"log_level": "debug"}).status == 204
        assert c.put("http://unix/api/v2/daemon", {"log_level": "INFO"}).status == 204
        assert c.put("http://unix/api/v1/daemon", {"log_level": "bogus"}).status == 500

        ev = c.get("http://unix/api/v1/daemon/events").body
        assert ev["max_errors"] == 500 and ev["max_size"] == 51200
        assert ev["total_errors"] >= len(ev["errors"])
        assert ev["total_size"] == sum(len(e) for e in ev["errors"])

        # no --supervisor: sendfd has nowhere to go (501, where nydusd panics); no blob API on fuse
        assert c.put("http://unix/api/v1/daemon/fuse/sendfd").status == 501
        assert c.get("http://unix/api/v2/blobs").status == 400  # domain_id is required
        assert c.get("http://unix/api/v2/blobs?domain_id=d").status == 501  # and this is no fscache daemon

        # one connection served everything: keep-alive held throughout
        assert c.conn.connects == 1
        assert c.get("http://unix/api/v1/daemon").body["state"] == "RUNNING"
        assert c.conn.connects == 1
    finally:
        c.close()


def test_start_while_running_is_refused(dedicated):
    c = dedicated.client()
    try:
        r = c.put("http://unix/api/v1/daemon/start")
        assert r.status == 400 and "UnexpectedEvent" in r.body["message"]
        assert c.get("http://unix/api/v1/daemon").body["state"] == "RUNNING"
        # takeover is not a RUNNING daemon's business either
        assert c.put("http://unix/api/v1/daemon/fuse/takeover").status == 400
        assert c.get("http://unix/api/v1/daemon").body["state"] == "RUNNING"
        assert c.conn.connects == 1
    finally:
        c.close()
    assert dedicated.alive()


def test_liveness_watch_sees_only_death(image, tmp_path):
    """The snapshotter's monitor: an idle connection, watched for HUP. Nothing may arrive
    while the daemon lives (however long and whatever else happens); SIGKILL must wake it."""
    d = start_dedicated(image, tmp_path)
    watch = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        watch.connect(d.sock)
        poller = select.poll()
        poller.register(watch, select.POLLHUP | select.POLLERR | select.POLLIN)
        c = d.client()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            assert poller.poll(250) == [], "the idle watch connection got an event while the daemon lives"
            assert c.get("http://unix/api/v1/metrics").status == 200
            assert c.get("http://unix/api/v1/daemon").body["state"] == "RUNNING"
        c.close()
        assert poller.poll(500) == []

        d.signal(signal.SIGKILL)
        t0 = time.monotonic()
        events = poller.poll(5000)
        assert events, "no event on the watch connection within 5 s of SIGKILL"
        assert time.monotonic() - t0 < 5
        mask = events[0][1]
        assert mask & (select.POLLHUP | select.POLLERR) or (mask & select.POLLIN and watch.recv(1) == b""), mask
        assert d.wait(10) == -signal.SIGKILL
    finally:
        watch.close()
        d.cleanup()
        lazy_umount(d.mnt)
    assert not is_mounted(d.mnt)


def test_exit_keeps_the_mount(image, tmp_path):
    d = start_dedicated(image, tmp_path)
    try:
        c = d.client()
        assert c.put("http://unix/api/v1/daemon/exit").status == 204
        c.close()
        assert d.wait(15) == 0
        assert is_mounted(d.mnt), "PUT /daemon/exit must leave the FUSE mount in place"
    finally:
        d.cleanup()
    assert not is_mounted(d.mnt)


def test_sigterm_unmounts_and_exits_zero(image, tmp_path):
    d = start_dedicated(image, tmp_path)
    try:
        assert is_mounted(d.mnt)
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0
        assert not is_mounted(d.mnt), "SIGTERM must unmount"
    finally:
        d.cleanup()


# --- shared mode -----------------------------------------------------------------------------


def test_shared_daemon_mounts_by_snapshot_id(shared, image, image_b, tmp_path):
    c = shared.client()
    try:
        info = c.get("http://unix/api/v1/daemon").body
        assert info["state"] == "RUNNING" and info["backend_collection"] == {}
        assert os.listdir(shared.mnt) == []
        # no instance at all: metrics have nothing to report
        assert c.get("http://unix/api/v1/metrics").status == 404

        images = {"snap1": image, "snap2": image_b, "snap3": image}
        for sid, img in images.items():
            cfg = v1_config(f"/{sid}", img.blobs, tmp_path / f"cache-{sid}")
            r = c.post(f"http://unix/api/v1/mount?mountpoint=%2F{sid}", mount_cmd(img.boot, cfg))
            assert r.status == 204, r
        assert sorted(os.listdir(shared.mnt)) == ["snap1", "snap2", "snap3"]
        info = c.get("http://unix/api/v1/daemon").body
        assert sorted(info["backend_collection"]) == ["/snap1", "/snap2", "/snap3"]
        assert info["backend_collection"]["/snap2"]["config"]["id"] == "/snap2"

        for sid, img in images.items():
            assert_files(shared.mnt / sid, img.files)

        for sid, img in images.items():
            fs = c.get(f"http://unix/api/v1/metrics?id=%2F{sid}").body
            assert fs["id"] == f"/{sid}"
            assert fs["data_read"] >= sum(len(x) for x in img.files.values())
            bc = c.get(f"http://unix/api/v1/metrics/blobcache?id=%2F{sid}").body
            assert bc["store_path"] == str(tmp_path / f"cache-{sid}")
            be = c.get(f"http://unix/api/v1/metrics/backend?id=%2F{sid}").body
            assert be["read_count"] > 0
        # several instances and no id: nothing to pick
        assert c.get("http://unix/api/v1/metrics").status == 404
        assert c.get("http://unix/api/v1/metrics/blobcache").status == 404

        # per-snapshot hot-reload keys
        assert c.put("http://unix/api/v1/config?id=%2Fsnap1", {"registry_auth": "YTpi"}).status == 204
        assert c.get("http://unix/api/v1/config?id=%2Fsnap1").body == {"registry_auth": "YTpi"}
        assert c.get("http://unix/api/v1/config?id=%2Fsnap2").body == {}

        # the same instance again is a no-op (the snapshotter re-mounts after an upgrade);
        # another image at a taken path is refused
        same = c.post(
            "http://unix/api/v1/mount?mountpoint=%2Fsnap1",
            mount_cmd(image.boot, v1_config("/snap1", image.blobs, tmp_path / "cache-snap1")),
        )
        assert same.status == 204
        dup = c.post(
            "http://unix/api/v1/mount?mountpoint=%2Fsnap1",
            mount_cmd(image_b.boot, v1_config("/snap1", image_b.blobs, tmp_path / "cache-snap1")),
        )
        assert dup.status == 500 and "already exists" in dup.body["message"]
        assert_files(shared.mnt / "snap1", image.files)

        assert c.delete("http://unix/api/v1/mount?mountpoint=%2Fsnap2").status == 204
        assert sorted(os.listdir(shared.mnt)) == ["snap1", "snap3"]
        assert not os.path.exists(shared.mnt / "snap2" / "hello.txt")
        assert "/snap2" not in c.get("http://unix/api/v1/daemon").body["backend_collection"]
        assert c.get("http://unix/api/v1/metrics?id=%2Fsnap2").status == 404
        assert c.get("http://unix/api/v1/metrics/blobcache?id=%2Fsnap2").status == 404
        again = c.delete("http://unix/api/v1/mount?mountpoint=%2Fsnap2")
        assert again.status == 500 and "doesn't exist" in again.body["message"]
        assert_files(shared.mnt / "snap1", image.files)  # neighbours unaffected

        cfg = v1_config("/snap2", image_b.blobs, tmp_path / "cache-snap2")
        assert c.post("http://unix/api/v1/mount?mountpoint=%2Fsnap2", mount_cmd(image_b.boot, cfg)).status == 204
        assert_files(shared.mnt / "snap2", image_b.files)
        assert c.get("http://unix/api/v1/metrics?id=%2Fsnap2").body["id"] == "/snap2"

        assert c.conn.connects == 1
    finally:
        c.close()


def test_per_file_metrics(shared, image, tmp_path):
    """iostats_files, access_pattern and latest_read_files (spec §8.2-8.3), switched on in
    one instance's v1 config; its neighbour, with them off, reports nothing per file."""
    c = shared.client()
    try:
        on = dict(
            v1_config("/on", image.blobs, tmp_path / "cache-on"),
            iostats_files=True,
            access_pattern=True,
            latest_read_files=True,
        )
        assert c.post("http://unix/api/v1/mount?mountpoint=%2Fon", mount_cmd(image.boot, on)).status == 204
        off = v1_config("/off", image.blobs, tmp_path / "cache-off")
        assert c.post("http://unix/api/v1/mount?mountpoint=%2Foff", mount_cmd(image.boot, off)).status == 204
        fs = c.get("http://unix/api/v1/metrics?id=%2Fon").body
        assert (fs["files_account_enabled"], fs["access_pattern_enabled"], fs["record_latest_read_files_enabled"]) == (
            True,
        ) * 3
        assert c.get("http://unix/api/v1/metrics/files?id=%2Fon&latest=true").body == []

        read = sorted(image.files)[:3]
        before = time.time()
        for rel in read:
            assert_files(shared.mnt / "on", {rel: image.files[rel]})
            assert_files(shared.mnt / "off", {rel: image.files[rel]})
        # The counters use the instance's own inode numbers; the kernel sees them with the
        # instance's index in the top 8 bits.
        inos = {rel: os.stat(shared.mnt / "on" / rel).st_ino & ((1 << 56) - 1) for rel in read}

        files = c.get("http://unix/api/v1/metrics/files?id=%2Fon").body
        for rel, ino in inos.items():
            if not image.files[rel]:
                # zero-message opens (as nydusd's): the kernel sends neither OPEN nor, for an
                # empty file, READ, so nothing reaches the daemon to count
                continue
            f = files[str(ino)]
            assert f["data_read"] == len(image.files[rel]), rel
            assert f["fop_hits"][4] >= 1, f  # reads
        pattern = c.get("http://unix/api/v1/metrics/pattern?id=%2Fon").body
        seen = {p["ino"]: p for p in pattern}
        for rel, ino in inos.items():
            if image.files[rel]:
                assert seen[ino]["nr_read"] >= 1
                assert seen[ino]["first_access_time_secs"] >= int(before) - 1
        latest = c.get("http://unix/api/v1/metrics/files?id=%2Fon&latest=true").body
        listed = {i for r in latest for i in range(r[0], r[-1] + 1)}
        assert {ino for rel, ino in inos.items() if image.files[rel]} <= listed
        assert c.get("http://unix/api/v1/metrics/files?id=%2Fon&latest=true").body == [], "cleared on read"

        assert c.get("http://unix/api/v1/metrics/files?id=%2Foff").body == {}
        assert c.get("http://unix/api/v1/metrics/pattern?id=%2Foff").body == []
        assert c.get("http://unix/api/v1/metrics/files?id=%2Fnope").status == 404
    finally:
        c.close()


def test_crashed_predecessor_is_detected_at_start(image, tmp_path):
    """Spec §3.4: after a kill -9 the mount is still there and the socket file refuses
    connections; a daemon started with the same flags stays INIT (waiting for a takeover)
    instead of mounting over it, and says so on its new socket."""
    import subprocess

    d = start_dedicated(image, tmp_path)
    argv = d.argv
    try:
        d.proc.kill()
        d.wait(15)
        assert is_mounted(d.mnt) and os.path.exists(d.sock)
        again = subprocess.Popen(argv, stdout=open(tmp_path / "again.log", "wb"), stderr=subprocess.STDOUT)
        try:
            from tests.helpers.daemons import ApiClient

            deadline, state = time.monotonic() + 20, None
            while time.monotonic() < deadline and state is None:
                try:
                    c = ApiClient(d.sock, timeout=5)
                    state = c.get("http://unix/api/v1/daemon").body["state"]
                    c.close()
                except OSError:
                    time.sleep(0.1)
            assert state == "INIT"
            # INIT refuses start (no takeover has happened) and changes nothing
            c = ApiClient(d.sock, timeout=5)
            assert c.put("http://unix/api/v1/daemon/start", check=False).status == 400
            assert c.get("http://unix/api/v1/daemon").body["state"] == "INIT"
            c.close()
        finally:
            again.send_signal(signal.SIGTERM)
            again.wait(15)
    finally:
        d.cleanup()
    assert not is_mounted(d.mnt)
