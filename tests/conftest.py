"""Shared fixtures: a generated source tree (tests/treegen.py), images built from it, the
Nydus v2.2 fixtures, and the ``kernel`` marker's skip rule."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import nydus_hybrid
import treegen
from nydus_hybrid.mounts import erofs as kmount

FIXTURES = Path(os.environ.get("NYDUS_FIXTURES") or Path(__file__).resolve().parents[2] / "shared/fixtures/nydus-v2.2")
FIXTURE_BOOT = FIXTURES / "rafs-v6-2.2.boot"
FIXTURE_BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
FIXTURE_INLINE_ID = "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"
FIXTURE_TAR = FIXTURES / "all-entry-type.tar"

# How many small files the generated tree holds (CI uses the default).
SMALL_FILES = int(os.environ.get("NYDUS_TEST_SMALL_FILES", "10000"))

KERNEL_SKIP_REASON = (
    "needs file-backed EROFS mounts: run as root on a kernel with erofs (kmount.erofs_available() is False)"
)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``kernel`` skip only when this process cannot make EROFS mounts."""
    if kmount.erofs_available():
        return
    skip = pytest.mark.skip(reason=KERNEL_SKIP_REASON)
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURE_BOOT.exists():
        pytest.fail(f"Nydus fixtures missing at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory) -> treegen.TreeInfo:
    """The generated source tree (read-only by convention: never modify it in a test)."""
    if os.geteuid() != 0:
        pytest.skip("the generated tree needs root (device nodes, trusted.* xattrs, chown)")
    root = tmp_path_factory.mktemp("source") / "tree"
    return treegen.make_tree(str(root), small_files=SMALL_FILES)


@dataclass
class Built:
    bootstrap: Path
    blob_dir: Path
    report: nydus_hybrid.BuildReport

    def open(self) -> nydus_hybrid.Image:
        return nydus_hybrid.Image.open(self.bootstrap, self.blob_dir)


def build_into(source, out: Path, **kw) -> Built:
    out.mkdir(parents=True, exist_ok=True)
    kw.setdefault("progress", False)
    report = nydus_hybrid.build(source, out / "bootstrap", out / "blobs", **kw)
    return Built(out / "bootstrap", out / "blobs", report)


@pytest.fixture(scope="session")
def built(source_tree, tmp_path_factory) -> Built:
    """The generated tree built with the defaults (zstd, blake3, 1 MiB chunks)."""
    return build_into(source_tree.root, tmp_path_factory.mktemp("built"))


@pytest.fixture(scope="session")
def image(built) -> nydus_hybrid.Image:
    return built.open()


@pytest.fixture
def fixture_copy(tmp_path, fixtures_dir) -> Path:
    """A writable copy of the fixture directory (bootstrap and both blobs)."""
    out = tmp_path / "fixtures"
    out.mkdir()
    for name in ("rafs-v6-2.2.boot", FIXTURE_BLOB_ID, FIXTURE_INLINE_ID):
        shutil.copyfile(fixtures_dir / name, out / name)
        os.chmod(out / name, 0o644)
    return out
