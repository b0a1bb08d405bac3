"""The README's main command, on a small source: build, daemon, FUSE mount, compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
