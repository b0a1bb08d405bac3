"""Running tests inside a VM on a test kernel (scripts/vm/run.sh: qemu and virtme-ng), for
what this machine's kernel lacks. The kernel is NYDUS_TEST_KERNEL, by default the shared
one (../shared/kernels/README.md says how it was built; scripts/vm/build-kernel.sh
rebuilds it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
DEFAULT_KERNEL = REPO.parent / "shared" / "kernels" / "bzImage-6.12.118-test"


def kernel() -> Path:
    return Path(os.environ.get("NYDUS_TEST_KERNEL") or DEFAULT_KERNEL)


def missing() -> Optional[str]:
    """Why no VM can be booted here, or None."""
    if os.geteuid() != 0:
        return "the VM tests run as root"
    if not kernel().is_file():
        return f"no test kernel at {kernel()} (set NYDUS_TEST_KERNEL)"
    for tool in ("vng", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (virtme-ng from PyPI, qemu-system-x86 from Debian)"
    return None


@dataclass
class Run:
    returncode: int
    output: str


def run(argv: Sequence[str], timeout: float = 2700) -> Run:
    """`argv` as root in the VM, from the checkout; its combined output and exit status.
    The guest gets none of our environment but PYTHONPATH (a checkout run without
    installing the package)."""
    pythonpath = os.environ.get("PYTHONPATH")
    env_prefix = ["env", f"PYTHONPATH={pythonpath}"] if pythonpath else []
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "vm" / "run.sh"), *env_prefix, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        # The VM's own limit (scripts/vm/run.sh) ends it a minute before ours would.
        env={**os.environ, "NYDUS_TEST_KERNEL": str(kernel()), "NYDUS_VM_TIMEOUT": str(int(timeout) - 60)},
    )
    return Run(r.returncode, r.stdout.decode(errors="replace"))


@dataclass
class JunitSummary:
    tests: int
    failures: int
    errors: int
    skipped: int
    names: List[str]


def junit_summary(path: Path) -> JunitSummary:
    suite = ET.parse(path).getroot()
    if suite.tag == "testsuites":
        suite = suite[0]
    names = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")]
    return JunitSummary(
        int(suite.get("tests", 0)),
        int(suite.get("failures", 0)),
        int(suite.get("errors", 0)),
        int(suite.get("skipped", 0)),
        names,
    )
