"""The ``singleton`` (fscache) daemon as a process, and the blob entries the snapshotter
registers with it, for the fscache tests on the simulator (tests/compat/test_singleton.py)
and on the real kernel (tests/vm/guest/)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Sequence

from nydus_hybrid.mounts import fscache
from nydus_hybrid.waits import scaled
from tests.helpers.daemons import DAEMON, ApiClient, BuiltImage, is_mounted, read_uncached, stop_process


class Singleton:
    """`python -m nydus_hybrid.daemon singleton --fscache WORKDIR/cache`, waited for `wait`."""

    def __init__(self, workdir: Path, extra: Sequence[str] = (), sock: str = "api.sock", wait: str = "RUNNING"):
        self.workdir = workdir
        (workdir / "cache").mkdir(parents=True, exist_ok=True)
        self.sock = str(workdir / sock)
        self.log_path = workdir / f"{sock}.log"
        self.argv = [
            *DAEMON,
            "singleton",
            "--fscache",
            str(workdir / "cache"),
            "--fscache-threads",
            "2",
            "--apisock",
            self.sock,
            "--log-level",
            "info",
            *extra,
        ]
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self.logf, stderr=subprocess.STDOUT)
        if wait:
            self.wait_state(wait)

    def wait_state(self, want: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")[-3000:]
            if os.path.exists(self.sock):
                try:
                    if self.client().get("/api/v1/daemon", check=False).body["state"] == want:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"singleton not {want}")

    def client(self) -> ApiClient:
        return ApiClient(self.sock)

    def stop(self) -> None:
        stop_process(self.proc)
        self.logf.close()


PREFETCH = {"enable": True, "threads_count": 2, "merging_size": 1 << 20, "bandwidth_rate": 0}


def entry(image: BuiltImage, fid: str, work_dir: Path, domain: str = "", prefetch: bool = False) -> Dict[str, Any]:
    """The snapshotter's `PUT /api/v2/blobs` body for one image's bootstrap (with its
    `prefetch_config` when `prefetch`)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    doc: Dict[str, Any] = {
        "type": "bootstrap",
        "id": fid,
        "domain_id": domain or fid,
        "config": {
            "id": fid,
            "backend_type": "localfs",
            "backend_config": {"dir": str(image.blobs)},
            "cache_type": "fscache",
            "cache_config": {"work_dir": str(work_dir)},
            "metadata_path": str(image.boot),
        },
    }
    if prefetch:
        doc["config"]["prefetch_config"] = dict(PREFETCH)
    return doc


def assert_image(mnt: Path, image: BuiltImage) -> None:
    """Every file of the image reads back through the mount, its page cache dropped first."""
    for rel, data in image.files.items():
        r = read_uncached(mnt / rel)
        assert r.returncode == 0 and r.stdout == data, (rel, r.stderr[-300:])


def assert_unregistered_mount_fails(daemon: Singleton, mnt: Path) -> None:
    """An fsid no entry registered: the mount fails with an errno, leaves nothing mounted,
    and the daemon keeps RUNNING."""
    mnt.mkdir()
    try:
        fscache.mount_erofs_fscache(str(mnt), "nobody")
    except OSError as e:
        assert e.errno, e
    else:
        raise AssertionError("a mount of an unregistered fsid succeeded")
    assert not is_mounted(mnt)
    assert daemon.client().get("/api/v1/daemon").body["state"] == "RUNNING"


def umount_under(base: Path) -> None:
    """Lazily unmount whatever a test left mounted below `base`."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4].startswith(str(base)):
                subprocess.run(["umount", "-l", line.split()[4]], capture_output=True)
