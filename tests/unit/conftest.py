"""Fixtures the command-line tests share (test_cli.py, test_cli_storage.py): a small source
tree and its image built by `nydus-hybrid build`, once per module."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Tuple

import pytest

from tests.helpers.cli import B_SIZE, cli


@pytest.fixture(scope="module")
def small_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("cli") / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n" * 1000)
    (src / "sub" / "b.bin").write_bytes(random.Random(7).randbytes(B_SIZE))  # 3 distinct chunks at 1M
    (src / "sub" / "c.txt").write_bytes(b"alpha\n" * 1000)  # duplicate of a.txt
    os.symlink("a.txt", src / "link")
    return src


@pytest.fixture(scope="module")
def built_cli(
    small_src: Path, tmp_path_factory: pytest.TempPathFactory
) -> Tuple[Path, Path, Path, subprocess.CompletedProcess[str]]:
    """(bootstrap, blob directory, report file, the build's completed process)."""
    out = tmp_path_factory.mktemp("cli_img")
    boot, blobs, report = out / "boot", out / "blobs", out / "report.json"
    p = cli("build", small_src, "-B", boot, "-D", blobs, "--output-json", report, check=0)
    return boot, blobs, report, p
