"""The reference Nydus tools (nydus-rs 2.2.0 from crates.io, built by
scripts/install-nydus-reference.sh): where they are, and what a test does when they are not
there. CI sets NYDUS_REQUIRE_REFERENCE=1, so there a missing tool fails the test; elsewhere
the test skips with the command that installs it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REF_BIN = Path(os.environ.get("NYDUS_REF_ROOT", Path.home() / ".cache/nydus-hybrid/nydus-ref")) / "bin"
INSTALL_HINT = "run scripts/install-nydus-reference.sh"


def tool(name: str) -> str:
    """The path of reference tool `name` (nydusd, nydus-image, nydusctl)."""
    path = REF_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("NYDUS_REQUIRE_REFERENCE") == "1":
        pytest.fail(f"reference tool {name} missing ({INSTALL_HINT})")
    pytest.skip(f"reference tool {name} not installed ({INSTALL_HINT})")
