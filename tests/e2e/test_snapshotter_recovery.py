"""nydus-snapshotter's recovery scenarios (spec A13 #6, #7, #8, #9) with a real containerd and
runc, on a Debian image pulled lazily through our snapshotter:

* the snapshotter alone is killed (-9) and restarted: the image's daemon and its mount
  survive, a running container keeps reading files it never read before, and a container
  created before the kill starts after it;
* the snapshotter and the image's daemon are killed together: the restarted snapshotter
  restarts the daemon from its store, and new containers start;
* `ctr snapshots usage` before and after a container starts, and the restart policy:
  containerd's restart monitor brings a killed container back on the same snapshot, and
  again after its image's daemon is killed;
* under the failover policy the daemon is killed twice while a container runs and its
  rootfs is read in a loop (page cache dropped each pass): no read fails, no byte is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tarfile
import time
import uuid
from pathlib import Path
from typing import Dict, List

import pytest

from nydus_hybrid.containerd.client import Client
from nydus_hybrid.containerd.pull import Puller
from nydus_hybrid.convert.reference import parse_registry
from nydus_hybrid.convert.registry import Registry
from nydus_hybrid.snapshotter import labels
from tests.helpers import servers
from tests.helpers.containerd import SNAPSHOTTER, Containerd
from tests.helpers.layers import debian_base, push_debian_nydus
from tests.helpers.mounts import is_mounted
from tests.helpers.snapshots import CheckingReader, SnapshotterProcess, daemon_pids, kill_daemon_and_wait

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containerd and mounts need root")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recover-img")
    servers.require_binary(servers.REGISTRY_BIN)
    registry = servers.Registry(tmp / "registry").start()
    try:
        ref = push_debian_nydus(tmp, f"{registry.host}/debian:nydus")
        yield registry, ref
    finally:
        registry.close()


class Stack:
    def __init__(self, tmp: Path, registry, ref: str, policy: str) -> None:
        self.ref = ref
        self.registry = registry
        extra = ["--plain-http-registry", registry.host, "--recover-policy", policy]
        self.snap = SnapshotterProcess(tmp / "sn", extra=extra).start()
        self.ctd = Containerd(tmp / "ctd", self.snap.address).start()
        # runc keeps its state per namespace under /run, shared by every containerd: names
        # unique to this stack keep tests apart.
        self.suffix = uuid.uuid4().hex[:8]
        self.keeper = self.name("keeper")

    def name(self, what: str) -> str:
        return f"{what}-{self.suffix}"

    def pull(self) -> None:
        source = Registry(parse_registry(self.ref), plain_http=True)
        with Client(str(self.ctd.address), "test") as client:
            report = Puller(client, source, SNAPSHOTTER).pull()
        assert report.layers[0].lazy

    def run(self, name: str, *cmd: str) -> str:
        return self.ctd.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, self.ref, self.name(name), *cmd).stdout

    def close(self) -> None:
        self.ctd.ctr("tasks", "kill", "-s", "SIGKILL", "--all", self.keeper, check=False)
        time.sleep(0.5)
        self.ctd.ctr("tasks", "delete", "-f", self.keeper, check=False)
        self.ctd.ctr("containers", "delete", self.keeper, check=False)
        self.ctd.stop()
        self.snap.stop()
        self.snap.reap_daemons()


@pytest.fixture
def stack_factory(tmp_path, image):
    made: List[Stack] = []

    def make(policy: str) -> Stack:
        # A short root: the snapshotter's root must fit daemon socket paths.
        registry, ref = image
        s = Stack(Path(os.path.realpath(tmp_path)), registry, ref, policy)
        made.append(s)
        s.pull()
        return s

    yield make
    for s in made:
        s.close()


def debian_files() -> Dict[str, bytes]:
    """Regular files of the Debian base, keyed by path, for byte checks (a sample of them,
    large and small)."""
    out: Dict[str, bytes] = {}
    with tarfile.open(debian_base()) as t:
        for m in t:
            if m.isreg() and m.name.startswith(("./usr/bin/", "./usr/lib/x86_64-linux-gnu/", "./etc/")):
                f = t.extractfile(m)
                assert f is not None
                out[m.name[2:]] = f.read()
    return out


def container_rootfs(stack: Stack, container: str) -> Path:
    root = stack.ctd.state / "io.containerd.runtime.v2.task" / "test" / container / "rootfs"
    assert is_mounted(str(root)), f"{root} is not mounted"
    return root


def start_keeper(stack: Stack) -> None:
    stack.ctd.ctr("run", "-d", "--snapshotter", SNAPSHOTTER, stack.ref, stack.keeper, "sleep", "3600")


def exec_in(stack: Stack, container: str, exec_id: str, *cmd: str) -> str:
    return stack.ctd.ctr("tasks", "exec", "--exec-id", exec_id, container, *cmd).stdout


def test_only_the_snapshotter_is_killed(stack_factory):
    s = stack_factory("restart")
    want = debian_files()
    start_keeper(s)
    s.ctd.ctr(
        "containers", "create", "--snapshotter", SNAPSHOTTER, s.ref, s.name("later"), "cat", "/etc/debian_version"
    )
    daemons = daemon_pids(s.snap.root)
    assert len(daemons) == 1
    s.snap.kill()
    # With the snapshotter down, the running container still reads files never read before.
    got = exec_in(s, s.keeper, "e1", "sha256sum", "/usr/bin/perl")
    assert got.split()[0] == hashlib.sha256(want["usr/bin/perl"]).hexdigest()
    s.snap.start()
    s.ctd.wait_snapshotter()
    assert daemon_pids(s.snap.root) == daemons, "the daemon survived, and the store knows it"
    # The container created before the kill starts now.
    s.ctd.ctr("tasks", "start", s.name("later"))
    assert s.ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "info", s.name("later")).returncode == 0
    got = exec_in(s, s.keeper, "e2", "sha256sum", "/usr/bin/apt")
    assert got.split()[0] == hashlib.sha256(want["usr/bin/apt"]).hexdigest()
    assert s.run("after", "cat", "/etc/debian_version").strip() == want["etc/debian_version"].decode().strip()


def test_the_snapshotter_and_its_daemons_are_killed(stack_factory):
    s = stack_factory("restart")
    want = debian_files()["etc/debian_version"].decode().strip()
    assert s.run("first", "cat", "/etc/debian_version").strip() == want
    s.ctd.ctr(
        "containers", "create", "--snapshotter", SNAPSHOTTER, s.ref, s.name("later"), "cat", "/etc/debian_version"
    )
    (old,) = daemon_pids(s.snap.root)
    s.snap.kill()
    os.kill(old, signal.SIGKILL)
    time.sleep(0.5)
    s.snap.start()
    s.ctd.wait_snapshotter()
    # The dead daemon was restarted from the store at start (A10 step 4).
    (new,) = daemon_pids(s.snap.root)
    assert new != old
    assert s.run("second", "cat", "/etc/debian_version").strip() == want
    start = s.ctd.ctr("tasks", "start", s.name("later"))
    assert start.stdout.strip() == want


def test_failover_twice_under_a_running_container(stack_factory):
    s = stack_factory("failover")
    want = debian_files()
    start_keeper(s)
    rootfs = container_rootfs(s, s.keeper)
    with CheckingReader(rootfs, want) as reader:
        for _ in range(2):
            kill_daemon_and_wait(s.snap.root)
            reader.wait_passes(1, timeout=120)
    assert reader.errors == [], reader.errors[:5]
    # The container itself saw no failure either.
    assert (
        exec_in(s, s.keeper, "e1", "cat", "/etc/debian_version").strip() == want["etc/debian_version"].decode().strip()
    )


def usage(stack: Stack) -> Dict[str, int]:
    """`ctr snapshots usage`: bytes per snapshot key (its SIZE column, in ctr's units)."""
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    out: Dict[str, int] = {}
    for line in stack.ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "usage").stdout.splitlines()[1:]:
        key, size, unit, _inodes = line.split()
        out[key] = int(float(size) * units[unit])
    return out


def snapshot_labels(stack: Stack, key: str) -> Dict[str, str]:
    info = json.loads(stack.ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "info", key).stdout)
    return dict(info.get("Labels") or {})


def test_snapshot_usage_and_the_restart_policy(stack_factory):
    """A13 #8. Before any container the data layer holds only its empty directory (the pull
    downloaded no data); once a container has read files, the data layer's usage counts what
    the blob cache holds of its blob, and the container's own snapshot is listed. A
    container with containerd's restart label (`containerd.io/restart.status=running`) is
    killed: containerd's restart monitor starts it again on the same snapshot (the file its
    first run wrote is still there), and again after the image's daemon is killed too (the
    snapshotter's `restart` policy brings the daemon back). Once it is deleted, its snapshot
    is gone."""
    s = stack_factory("restart")
    before = usage(s)
    (data_layer,) = [k for k in before if labels.is_nydus_data_layer(snapshot_labels(s, k))]
    assert len(before) == 2 and before[data_layer] <= 4096, before
    name = s.name("restarted")
    log = s.ctd.dir / f"{name}.log"
    # Every run prints the Debian version; runs after the first print "kept" (they find the
    # first run's /marker in the container's snapshot).
    script = "if test -e /marker; then echo kept; else echo first > /marker; fi; cat /etc/debian_version; sleep 3600"
    s.ctd.ctr(
        *("run", "-d", "--snapshotter", SNAPSHOTTER, "--log-uri", f"file://{log}"),
        *("--label", "containerd.io/restart.status=running", "--label", f"containerd.io/restart.loguri=file://{log}"),
        *(s.ref, name, "/bin/sh", "-c", script),
    )
    version = debian_files()["etc/debian_version"].decode().strip()

    def wait_runs(n: int) -> int:
        """Wait for the n-th run's output; the pid of the task that printed it."""
        deadline = time.monotonic() + 60
        while (log.read_text().count(version) if log.exists() else 0) < n:
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.2)
        return int(s.ctd.ctr("tasks", "ls").stdout.split(name)[1].split()[0])

    first = wait_runs(1)
    after = usage(s)
    assert after[data_layer] > before[data_layer] + (1 << 20), (
        "the data layer's usage is what the cache holds of its blob"
    )
    assert name in after, "the container's own snapshot is listed"
    s.ctd.ctr("tasks", "kill", "-s", "SIGKILL", name)
    second = wait_runs(2)
    assert second != first, "the restart monitor started a new task"
    assert log.read_text().count("kept") == 1, "the second run found the first run's /marker"
    kill_daemon_and_wait(s.snap.root)  # fails unless the snapshotter starts a successor
    s.ctd.ctr("tasks", "kill", "-s", "SIGKILL", name)
    wait_runs(3)
    assert log.read_text().count("kept") == 2, log.read_text()
    s.ctd.ctr("containers", "label", name, "containerd.io/restart.status=stopped")
    s.ctd.ctr("tasks", "kill", "-s", "SIGKILL", name)
    time.sleep(0.5)
    s.ctd.ctr("tasks", "delete", "-f", name, check=False)
    s.ctd.ctr("containers", "delete", name)
    assert name not in usage(s)
