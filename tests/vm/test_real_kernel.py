"""Boot the test kernel in a VM and run tests/vm/guest there against the real
/dev/cachefiles. Skipped with the reason when no VM can be booted, except in CI, where
it must run. Every guest test must pass: a skip there counts as a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import vm

GUEST_TESTS = 8  # tests/vm/guest/test_fscache_kernel.py


def test_fscache_daemon_on_the_real_kernel(tmp_path: Path) -> None:
    why = vm.missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-kernel tests: {why}")
        pytest.skip(why)
    junit = tmp_path / "guest-junit.xml"
    r = vm.run(["bash", "tests/vm/guest/boot.sh", str(junit)])
    tail = r.output[-12000:]
    assert junit.exists(), f"the guest wrote no report (rc {r.returncode}):\n{tail}"
    s = vm.junit_summary(junit)
    assert (s.failures, s.errors, s.skipped) == (0, 0, 0) and r.returncode == 0, tail
    assert s.tests == GUEST_TESTS, s.names
