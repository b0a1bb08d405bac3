"""One blob cache directory, two daemons: what our daemon cached, the real nydusd (2.2) serves
without fetching it again, and the other way round. The image is built by the real
`nydus-image`; each daemon reads the whole tree, and the second one's backend counters must
stay at zero (its blob meta and every chunk come from the first one's cache files)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest

import nydus_hybrid
from nydus_hybrid import treecmp
from tests.helpers import reference, treegen
from tests.helpers.blobcache import ready_chunks
from tests.helpers.daemons import Daemon

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="both daemons mount FUSE: needs root and /dev/fuse"
)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    base = tmp_path_factory.mktemp("interchange")
    tree = treegen.make_tree(str(base / "src"), small_files=300)
    boot, blobs = base / "bootstrap", base / "blobs"
    blobs.mkdir()
    p = subprocess.run(
        [reference.tool("nydus-image"), "create", "--fs-version", "6", "-B", str(boot), "-D", str(blobs), tree.root],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return tree, boot, blobs


def config(blobs: Path, cache: Path) -> Dict[str, Any]:
    return {
        "device": {
            "backend": {"type": "localfs", "config": {"dir": str(blobs)}},
            "cache": {"type": "blobcache", "config": {"work_dir": str(cache)}},
        },
        "mode": "direct",
        "digest_validate": False,  # nydusd 2.2 refuses it for v6
        "enable_xattr": True,
    }


def assert_whole_tree(src: str, mnt: Path) -> None:
    diff = treecmp.compare(src, str(mnt))
    # nydusd 2.2 shows an mtime of 0 as the mount time (see test_nydus_reference.py)
    real = [d for d in diff.differences if ": mtime 0 != " not in d]
    assert diff.entries > 300 and not real, real[:10]


def assert_all_cached(boot: Path, cache: Path) -> None:
    for b in nydus_hybrid.Image.open(str(boot)).inspect()["blobs"]:
        ready = ready_chunks(cache / f"{b['blob_id']}.chunk_map", b["chunk_count"])
        assert all(ready), f"{ready.count(False)} of {len(ready)} chunks not cached"


def read_with_ours(tmp: Path, image, cache: Path) -> Dict[str, Any]:
    tree, boot, blobs = image
    d = Daemon(tmp, config=config(blobs, cache), bootstrap=boot)
    try:
        assert_whole_tree(tree.root, d.mnt)
        backend: Dict[str, Any] = d.client().get("/api/v1/metrics/backend").body
        return backend
    finally:
        d.cleanup()


def read_with_nydusd(tmp: Path, image, cache: Path) -> Dict[str, Any]:
    tree, boot, blobs = image
    n = reference.Nydusd(tmp, config(blobs, cache), boot, tmp / "mnt")
    try:
        assert_whole_tree(tree.root, n.mnt)
        backend: Dict[str, Any] = n.get("/api/v1/metrics/backend")
        return backend
    finally:
        n.stop()


def test_nydusd_serves_what_we_cached(image, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    first = read_with_ours(tmp_path / "ours", image, cache)
    assert first["read_count"] > 0
    assert_all_cached(image[1], cache)
    second = read_with_nydusd(tmp_path / "nydusd", image, cache)
    assert second["read_count"] == 0 and second["read_amount_total"] == 0, second


def test_we_serve_what_nydusd_cached(image, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    first = read_with_nydusd(tmp_path / "nydusd", image, cache)
    assert first["read_count"] > 0
    assert_all_cached(image[1], cache)
    second = read_with_ours(tmp_path / "ours", image, cache)
    assert second["read_count"] == 0 and second["read_amount_total"] == 0, second


def test_back_and_forth_twice(image, tmp_path):
    """Ours, nydusd, ours, nydusd on one directory: each takes over the other's files."""
    cache = tmp_path / "cache"
    cache.mkdir()
    assert read_with_ours(tmp_path / "o1", image, cache)["read_count"] > 0
    for i, read in enumerate([read_with_nydusd, read_with_ours, read_with_nydusd]):
        m = read(tmp_path / f"r{i}", image, cache)
        assert m["read_count"] == 0, (i, m)
