"""The nydus-hybrid command line run as a subprocess, and the shape of its one-line errors
(tests/unit/test_cli.py, tests/unit/test_cli_storage.py; their small source tree and its
image are fixtures in tests/unit/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from typing import Optional

ERROR_PREFIX = "nydus-hybrid: error: "
# The size of sub/b.bin in the `small_src` tree: 3 distinct chunks at 1 MiB.
B_SIZE = 2_300_000


def cli(*args: object, check: Optional[int] = None, input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; stdin is `input`, or empty."""
    p = subprocess.run(
        [sys.executable, "-m", "nydus_hybrid", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        input=input if input is not None else "",
    )
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p


def assert_one_line_error(p: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    assert "Traceback" not in p.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    assert p.stdout == ""
