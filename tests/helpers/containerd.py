"""Debian's real containerd (1.6) in a private root, with our snapshotter declared as the
proxy plugin `nydus` (spec A2.1), and `ctr` against it. The CRI plugin is off unless
`cri_registry` is given: then it pulls with our snapshotter and the snapshot annotations
on (`disable_snapshot_annotations = false`), from that registry over plain http."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import pytest

from nydus_hybrid.waits import scaled

# containerd's state (the task bundles and their rootfs mounts) lives where a container in a
# user namespace can reach it, as /run/containerd is: every directory on the way is 0711.
STATE_BASE = Path("/run/nydus-hybrid-tests")
CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
SNAPSHOTTER = "nydus"


def require() -> None:
    for binary in (CONTAINERD, CTR, "/usr/sbin/runc"):
        if not os.access(binary, os.X_OK):
            message = f"{binary} is missing (apt-get install containerd runc)"
            pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


class Containerd:
    def __init__(
        self, workdir: Path, snapshotter_socket: Path, cri_registry: Optional[str] = None, plugin: str = SNAPSHOTTER
    ) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.address = workdir / "containerd.sock"
        self.log = workdir / "containerd.log"
        self.config = workdir / "config.toml"
        STATE_BASE.mkdir(mode=0o711, exist_ok=True)
        self.state = Path(tempfile.mkdtemp(prefix="ctd-", dir=STATE_BASE))
        self.state.chmod(0o711)
        self.config.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{workdir / "root"}"',
                    f'state = "{self.state}"',
                    *([] if cri_registry else ['disabled_plugins = ["io.containerd.grpc.v1.cri"]']),
                    "[grpc]",
                    f'  address = "{self.address}"',
                    f"[proxy_plugins.{plugin}]",
                    '  type = "snapshot"',
                    f'  address = "{snapshotter_socket}"',
                    # The restart monitor (containers labelled containerd.io/restart.status)
                    # checks every second rather than every 10 s.
                    '[plugins."io.containerd.internal.v1.restart"]',
                    '  interval = "1s"',
                    *(self._cri_config(cri_registry) if cri_registry else []),
                    "",
                ]
            )
        )
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def _cri_config(self, registry: str) -> List[str]:
        cri = '[plugins."io.containerd.grpc.v1.cri"'
        (self.dir / "cni").mkdir(exist_ok=True)
        return [
            f"{cri}]",
            "  disable_tcp_service = true",
            f"{cri}.containerd]",
            f'  snapshotter = "{SNAPSHOTTER}"',
            "  disable_snapshot_annotations = false",
            f"{cri}.cni]",
            f'  bin_dir = "{self.dir / "cni"}"',
            f'  conf_dir = "{self.dir / "cni"}"',
            f'{cri}.registry.mirrors."{registry}"]',
            f'  endpoint = ["http://{registry}"]',
        ]

    def start(self) -> Containerd:
        require()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [CONTAINERD, "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + scaled(30)
        while subprocess.run([CTR, "-a", str(self.address), "version"], capture_output=True).returncode != 0:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"containerd did not answer within {scaled(30):.0f} s"
            time.sleep(0.1)
        return self

    def ctr(
        self, *args: str, timeout: float = 300, check: bool = True, namespace: str = "test"
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [CTR, "-a", str(self.address), "-n", namespace, *args], capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert p.returncode == 0, f"ctr {' '.join(args)}: {p.stderr}"
        return p

    def wait_snapshotter(self, timeout: float = 20) -> None:
        """Until containerd reaches the snapshotter again: after the snapshotter restarts,
        containerd's connection to it redials with a backoff (at most 3 s in 1.6)."""
        deadline = time.monotonic() + timeout
        while self.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls", check=False).returncode != 0:
            assert time.monotonic() < deadline, "containerd did not reconnect to the snapshotter"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if not [m for m in Path("/proc/self/mountinfo").read_text().split() if m.startswith(f"{self.state}/")]:
            shutil.rmtree(self.state, ignore_errors=True)  # never through a container's rootfs
