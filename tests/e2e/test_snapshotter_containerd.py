"""Real containerd and runc on our snapshotter (the proxy plugin `nydus`): an ordinary OCI
image (a Debian base from mmdebstrap, as a docker archive made by skopeo) is imported and
unpacked through our Prepare/Commit, a container runs on the overlay our Mounts return, and
its snapshots go when it is removed. This is the fallback path every non-Nydus image takes."""

from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from tests.helpers.containerd import SNAPSHOTTER, Containerd
from tests.helpers.layers import debian_base, write_layout
from tests.helpers.managers import wait_until
from tests.helpers.snapshots import SnapshotterProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containerd and mounts need root")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctd")
    snap = SnapshotterProcess(tmp / "snroot").start()
    ctd = Containerd(tmp / "containerd", snap.address)
    try:
        ctd.start()
        yield snap, ctd, tmp
    finally:
        ctd.stop()
        snap.stop()


def test_an_oci_image_runs_under_containerd_on_our_snapshotter(stack):
    snap, ctd, tmp = stack
    layout = tmp / "oci"
    write_layout(layout, [debian_base()], ["gzip"])
    archive = tmp / "deb.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}", f"docker-archive:{archive}:deb:1"], check=True)
    ctd.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(archive))
    listed = ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()[1:]
    assert len(listed) == 1 and "Committed" in listed[0], listed

    run = ctd.ctr(
        "run",
        "--rm",
        "--snapshotter",
        SNAPSHOTTER,
        "docker.io/library/deb:1",
        "c1",
        "/bin/sh",
        "-c",
        "cat /etc/debian_version; echo written > /tmp/x; cat /tmp/x",
    )
    with tarfile.open(debian_base()) as t:
        f = t.extractfile("./etc/debian_version")
        assert f is not None
        want = f.read().decode().strip()
    assert run.stdout.split() == [want, "written"], run.stdout
    # The container's active snapshot went with it; the layer stays.
    after = ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()[1:]
    assert after == listed
    # containerd's metadata drops the snapshot at once; its garbage collector removes it
    # from the snapshotter a moment later.
    left = snap.root / "snapshots"
    wait_until(lambda: len(os.listdir(left)) == 1, explain=lambda: str(os.listdir(left)))
