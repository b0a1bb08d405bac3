"""Boot the test kernel in a VM and run tests/vm/guest there against the real
/dev/cachefiles. The host first converts the Debian base into a registry's storage under
/tmp (which the guest can write), for the guest's containerd test. Skipped with the reason
when no VM can be booted, except in CI, where it must run. Every guest test must pass: a
skip there counts as a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nydus_hybrid.convert.convert import ConvertOptions, convert
from nydus_hybrid.convert.store import open_source, open_target
from tests.helpers import servers, vm
from tests.helpers.layers import debian_base, write_layout

GUEST_TESTS = 9  # tests/vm/guest: test_fscache_kernel.py 8, test_snapshotter_fscache.py 1


def prepare_registry(tmp: Path) -> Path:
    """A registry's storage holding `debian:nydus`, the Debian base converted; the guest
    serves it with its own docker-registry."""
    storage = tmp / "registry"
    with servers.Registry(storage) as registry:
        write_layout(tmp / "oci", [debian_base()], ["gzip"])
        target = open_target(f"{registry.host}/debian:nydus", plain_http=True)
        convert(open_source(f"oci:{tmp / 'oci'}"), target, ConvertOptions())
    return storage


def test_fscache_daemon_on_the_real_kernel(tmp_path: Path) -> None:
    why = vm.missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-kernel tests: {why}")
        pytest.skip(why)
    junit = tmp_path / "guest-junit.xml"
    storage = prepare_registry(tmp_path)
    r = vm.run(["env", f"NYDUS_VM_REGISTRY_DIR={storage}", "bash", "tests/vm/guest/boot.sh", str(junit)])
    tail = r.output[-12000:]
    assert junit.exists(), f"the guest wrote no report (rc {r.returncode}):\n{tail}"
    s = vm.junit_summary(junit)
    assert (s.failures, s.errors, s.skipped) == (0, 0, 0) and r.returncode == 0, tail
    assert s.tests == GUEST_TESTS, s.names
