"""Boot the test kernel in a VM and run tests/vm/guest there against the real
/dev/cachefiles. The host first converts the Debian base into a registry's storage under
/tmp (which the guest can write), for the guest's containerd test. Skipped with the reason
when no VM can be booted, except in CI, where it must run. Every guest test must pass: a
skip there counts as a failure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import servers, vm
from tests.helpers.layers import push_debian_nydus

GUEST_TESTS = 38  # tests/vm/guest: fscache_kernel 8, snapshotter_fscache 1, devmapper_kernel 15, devmapper_suite 14


def prepare_registry(tmp: Path) -> Path:
    """A registry's storage holding `debian:oci`, the Debian base, and `debian:nydus`, its
    conversion; the guest serves it with its own docker-registry."""
    storage = tmp / "registry"
    with servers.Registry(storage) as registry:
        push_debian_nydus(tmp, f"{registry.host}/debian:nydus")
        # The OCI original too, for the devmapper snapshotter's container.
        dest = f"docker://{registry.host}/debian:oci"
        subprocess.run(
            ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{tmp / 'oci-debian'}", dest], check=True
        )
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
