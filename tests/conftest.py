"""Shared fixtures: a generated source tree (tests/helpers/treegen.py), images built from it,
the Nydus v2.2 fixtures (tests/helpers/images.py), and the ``kernel`` marker's skip rule."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List

import pytest

import nydus_hybrid
from nydus_hybrid.mounts import erofs
from tests.helpers import treegen
from tests.helpers.images import (
    FIXTURE_BLOB_ID,
    FIXTURE_BOOT,
    FIXTURE_INLINE_ID,
    FIXTURES,
    SMALL_FILES,
    Built,
    build_into,
)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Tests marked ``kernel`` skip only when this process cannot make EROFS mounts."""
    if erofs.erofs_available():
        return
    skip = pytest.mark.skip(
        reason="needs file-backed EROFS mounts: run as root on a kernel with erofs"
        " (nydus_hybrid.mounts.erofs.erofs_available() is False)"
    )
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURE_BOOT.exists():
        pytest.fail(f"Nydus fixtures missing at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> treegen.TreeInfo:
    """The generated source tree (read-only by convention: never modify it in a test)."""
    if os.geteuid() != 0:
        pytest.skip("the generated tree needs root (device nodes, trusted.* xattrs, chown)")
    root = tmp_path_factory.mktemp("source") / "tree"
    return treegen.make_tree(str(root), small_files=SMALL_FILES)


@pytest.fixture(scope="session")
def built(source_tree: treegen.TreeInfo, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The generated tree built with the defaults (zstd, blake3, 1 MiB chunks)."""
    return build_into(source_tree.root, tmp_path_factory.mktemp("built"))


@pytest.fixture(scope="session")
def image(built: Built) -> nydus_hybrid.Image:
    return built.open()


@pytest.fixture
def fixture_copy(tmp_path: Path, fixtures_dir: Path) -> Path:
    """A writable copy of the fixture directory (bootstrap and both blobs)."""
    out = tmp_path / "fixtures"
    out.mkdir()
    for name in ("rafs-v6-2.2.boot", FIXTURE_BLOB_ID, FIXTURE_INLINE_ID):
        shutil.copyfile(fixtures_dir / name, out / name)
        os.chmod(out / name, 0o644)
    return out
