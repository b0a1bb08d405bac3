"""Fixtures the compatibility tests share: the cachefiles simulator (the fscache tests) and
the bad-input tests' daemon (test_daemon_bad_input.py, test_daemon_openapi_fuzz.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers.cachefiles import Simulator
from tests.helpers.daemons import Ctx


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    """The cachefiles simulator, for the daemons this test starts (NYDUS_HYBRID_CACHEFILES)."""
    s = Simulator(tmp_path)
    monkeypatch.setenv("NYDUS_HYBRID_CACHEFILES", f"sim:{s.sock}")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    """One daemon per module, the image mounted at /base, and one keep-alive client."""
    c = Ctx(tmp_path_factory.mktemp("bad-input"))
    yield c
    c.client.close()
    c.daemon.cleanup()
