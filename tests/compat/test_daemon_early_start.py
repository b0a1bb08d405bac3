"""The early mount (`daemon.early`) of a real daemon: the snapshotter's dedicated-mode start
takes it, and every start that fails after it leaves nothing mounted."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.helpers.daemons import DAEMON, BuiltImage, Daemon, is_mounted, v1_config

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="the daemon mounts FUSE: needs root and /dev/fuse"
)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return BuiltImage(tmp_path_factory.mktemp("early") / "image")


def mounted_events(log_text: str):
    events = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") == "mounted"]


def opendirs_after_a_walk(d: Daemon, image: BuiltImage) -> int:
    """OPENDIRs the daemon saw once every directory of its mount was listed. One image at
    `/` needs none: the kernel caches its listings without asking, as with nydusd."""
    listed = {os.path.relpath(os.path.join(top, f), d.mnt) for top, _, files in os.walk(d.mnt) for f in files}
    assert set(image.files) <= listed
    return int(d.client().get("/api/v1/metrics?id=/").body["fop_hits"][8])  # nydusd's fop order


def test_dedicated_start_mounts_early_and_serves(image, tmp_path):
    d = Daemon(tmp_path, config=v1_config("/", image.blobs, tmp_path / "cache"), bootstrap=image.boot)
    try:
        [event] = mounted_events(d.log.read_text())
        assert event["early"] is True and event["instances"] == 1
        for rel, data in image.files.items():
            assert (d.mnt / rel).read_bytes() == data
        info = d.client().get("/api/v1/daemon").body
        assert info["state"] == "RUNNING" and list(info["backend_collection"]) == ["/"]
        assert opendirs_after_a_walk(d, image) == 0
    finally:
        d.cleanup()
    assert not is_mounted(d.mnt)


def test_an_option_early_does_not_read_takes_the_normal_start(image, tmp_path):
    cfg = v1_config("/", image.blobs, tmp_path / "cache")
    d = Daemon(tmp_path, config=cfg, bootstrap=image.boot, extra=["--virtual-mountpoint", "/"])
    try:
        [event] = mounted_events(d.log.read_text())
        assert event["early"] is False
        rel, data = next(iter(image.files.items()))
        assert (d.mnt / rel).read_bytes() == data
        assert opendirs_after_a_walk(d, image) == 0
    finally:
        d.cleanup()


def run(argv, timeout=30.0):
    return subprocess.run(DAEMON + argv, capture_output=True, text=True, timeout=timeout)


def test_a_bad_bootstrap_is_reported_by_the_normal_start_and_nothing_stays_mounted(image, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    bad = tmp_path / "bootstrap"
    bad.write_bytes(b"\0" * 4096)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(v1_config("/", image.blobs, tmp_path / "cache")))
    p = run(["fuse", "--mountpoint", str(mnt), "--bootstrap", str(bad), "--config", str(cfg)])
    assert p.returncode == 1, p
    assert p.stderr.startswith("nydusd: error: Mount(MountFilesystem(") and len(p.stderr.splitlines()) == 1
    assert not is_mounted(mnt)


def test_a_start_that_fails_after_the_early_mount_unmounts(image, tmp_path):
    """`--log-file` in a missing directory passes argv's reading but fails the log set-up:
    one line, exit 1, and nothing stays mounted (the in-process test below shows that `main`
    itself unmounts, not only the process's exit)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(v1_config("/", image.blobs, tmp_path / "cache")))
    argv = ["fuse", "--mountpoint", str(mnt), "--bootstrap", str(image.boot), "--config", str(cfg)]
    p = run([*argv, "--log-file", str(tmp_path / "no" / "such" / "dir" / "log")])
    assert p.returncode == 1, p
    assert p.stderr.startswith("nydusd: error: cannot open the log file") and len(p.stderr.splitlines()) == 1
    assert not is_mounted(mnt)


def test_main_unmounts_an_early_mount_it_does_not_adopt(image, tmp_path):
    """In this process, so that only `main` can unmount (no interpreter exit drops the
    session): a start that fails after the early mount leaves nothing mounted."""
    from nydus_hybrid.daemon import early
    from nydus_hybrid.daemon import main as daemon_main

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(v1_config("/", image.blobs, tmp_path / "cache")))
    argv = ["fuse", "--mountpoint", str(mnt), "--bootstrap", str(image.boot), "--config", str(cfg)]
    argv += ["--log-file", str(tmp_path / "no" / "such" / "dir" / "log")]
    made = early.start(argv)
    assert made is not None and is_mounted(mnt)
    try:
        assert daemon_main.main(argv, early=made) == 1
        assert not is_mounted(mnt)
    finally:
        made.undo()
