"""The README's main command: the container demo (registry, containerd, our snapshotter, a
lazy pull and a container run, everything stopped afterwards), and `demo --local` on a
small source (build, daemon, FUSE mount, compare)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers.mounts import is_mounted

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0, reason="needs /dev/fuse and root")


def test_demo_serves_the_image_through_the_daemon(source_tree, tmp_path):
    src = os.path.join(source_tree.root, "files")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "nydus_hybrid",
            "demo",
            "--local",
            "--source",
            src,
            "--workdir",
            str(tmp_path / "w"),
            "--keep",
            "--no-serve",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout)
    assert summary["fuse_mount"] == "identical"
    assert summary["fuse_entries_compared"] == summary["inodes"]
    assert summary["blob_cache_chunks"] == summary["chunks_verified"]
    assert not is_mounted(summary["mountpoint"]), "the daemon left its mount behind"


@pytest.mark.parametrize("registry", ["docker-registry", "embedded"])
def test_the_demo_runs_a_container_from_a_lazily_pulled_image(registry):
    # A short work directory: the snapshotter's root must fit daemon socket paths.
    work = Path(tempfile.mkdtemp(prefix="demo-", dir="/tmp"))
    p = subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", "demo", "--workdir", str(work), "--registry", registry],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    assert summary["container_output"].startswith("hello from a lazily pulled image: Python 3.")
    assert summary["lazy_layers"] == 1 and summary["ranged_blob_requests"] > 0
    assert 0 < summary["fetched_bytes"] < summary["image_blob_bytes"], summary
    assert summary["time_to_first_output_seconds"] > 0
    # It stopped and removed everything it started.
    assert not work.exists()
    with open("/proc/self/mounts") as f:
        assert str(work) not in f.read()
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(work).encode() in _cmdline(pid)]
    assert leftovers == [], leftovers


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
