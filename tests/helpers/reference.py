"""The reference Nydus tools (nydus-rs 2.2.0 from crates.io, built by
scripts/install-nydus-reference.sh): where they are, and what a test does when they are not
there. CI sets NYDUS_REQUIRE_REFERENCE=1, so there a missing tool fails the test; elsewhere
the test skips with the command that installs it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from nydus_hybrid.client import DaemonClient

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


def check(bootstrap: Path, blob_dir: Path) -> str:
    """`nydus-image check -B bootstrap -D blob_dir` must accept the image; returns its report."""
    p = subprocess.run(
        [tool("nydus-image"), "check", "-B", str(bootstrap), "-D", str(blob_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and "RAFS filesystem metadata is valid" in p.stdout, p.stdout + p.stderr
    return p.stdout


def merge_layer_blobs(out: Path, blobs: List[Path], workdir: Path) -> List[str]:
    """`nydus-image merge` of layer blobs the way nydus-snapshotter runs it: each blob's
    `image.boot` extracted under its digest, then merged with the digests and sizes.
    Returns the digests."""
    from nydus_hybrid import Image

    digests = [hashlib.sha256(b.read_bytes()).hexdigest() for b in blobs]
    for d, b in zip(digests, blobs):
        (workdir / d).write_bytes(Image.inline_bootstrap(b))
    sizes = ",".join(str(b.stat().st_size) for b in blobs)
    argv = [tool("nydus-image"), "merge", "-B", str(out), "--blob-digests", ",".join(digests), "--blob-sizes", sizes]
    p = subprocess.run([*argv, *(str(workdir / d) for d in digests)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return digests


class Nydusd:
    """The real nydusd serving `bootstrap` at `mnt` (dedicated, FUSE) with a config file."""

    def __init__(self, workdir: Path, config: Dict[str, Any], bootstrap: Path, mnt: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        mnt.mkdir(parents=True, exist_ok=True)
        self.mnt, self.sock, self.log = mnt, str(workdir / "nydusd-api.sock"), workdir / "nydusd.log"
        cfg = workdir / "nydusd-config.json"
        cfg.write_text(json.dumps(config))
        argv = [tool("nydusd"), "fuse", "--config", str(cfg), "--bootstrap", str(bootstrap)]
        # --rlimit-nofile 0: keep the limit (raising it needs CAP_SYS_RESOURCE)
        argv += ["--mountpoint", str(mnt), "--apisock", self.sock, "--log-level", "warn", "--rlimit-nofile", "0"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, "nydusd did not mount within 30 s"
            time.sleep(0.05)

    def get(self, path: str) -> Any:
        c = DaemonClient(self.sock, timeout=30)
        try:
            return c.request("GET", path)
        finally:
            c.close()

    def stop(self) -> None:
        """SIGTERM: nydusd unmounts and exits."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
