"""In the VM: the real /dev/cachefiles must be there (the launcher counts a skip as a failure)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _real_cachefiles_device() -> None:
    assert os.path.exists("/dev/cachefiles"), "the test kernel has no /dev/cachefiles"
    assert "NYDUS_HYBRID_CACHEFILES" not in os.environ, "the simulator must not stand in here"
