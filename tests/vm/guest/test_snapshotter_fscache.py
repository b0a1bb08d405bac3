"""containerd with our snapshotter on the `fscache` fs driver, on the test kernel's real
/dev/cachefiles: a Nydus image the host converted (its registry storage arrives as
NYDUS_VM_REGISTRY_DIR, tests/vm/guest/boot.sh) is pulled lazily, and containers run on an
overlay whose lower dir is EROFS over fscache, served by the snapshotter's singleton
daemon (spec A8.1). The files a container reads are the image's bytes; the data blob is
fetched by range only; removing the image unmounts EROFS and empties the snapshotter."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from nydus_hybrid.containerd.client import Client
from nydus_hybrid.containerd.pull import Puller
from nydus_hybrid.convert.reference import parse_registry
from nydus_hybrid.convert.registry import Registry as RegistrySource
from tests.helpers import servers
from tests.helpers.containerd import SNAPSHOTTER, Containerd
from tests.helpers.layers import debian_base
from tests.helpers.snapshots import SnapshotterProcess

# Files a container checks, by path in the image: small and large, text and ELF.
CHECKED = ("etc/debian_version", "usr/bin/bash", "usr/lib/x86_64-linux-gnu/libc.so.6")


def image_digests() -> Dict[str, str]:
    out = {}
    with tarfile.open(debian_base()) as t:
        for m in t:
            if m.name.removeprefix("./") in CHECKED and m.isreg():
                f = t.extractfile(m)
                assert f is not None
                out[m.name.removeprefix("./")] = hashlib.sha256(f.read()).hexdigest()
    assert sorted(out) == sorted(CHECKED), out
    return out


def erofs_mounts() -> List[List[str]]:
    """(mountpoint, source, options) of every EROFS mount, from mountinfo."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[sep + 1] == "erofs":
            out.append([fields[4], fields[sep + 2], fields[sep + 3]])
    return out


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[servers.Registry, SnapshotterProcess, Containerd]]:
    storage = os.environ.get("NYDUS_VM_REGISTRY_DIR")
    assert storage, "tests/vm/test_real_kernel.py prepares the registry and boot.sh names it"
    registry = servers.Registry(Path(storage)).start()
    snap = SnapshotterProcess(
        tmp_path / "sn", extra=["--fs-driver", "fscache", "--plain-http-registry", registry.host]
    ).start()
    ctd = Containerd(tmp_path / "ctd", snap.address).start()
    try:
        yield registry, snap, ctd
    finally:
        ctd.stop()
        snap.stop()
        snap.reap_daemons()
        registry.close()


def test_containers_run_on_erofs_over_fscache(stack: tuple[servers.Registry, SnapshotterProcess, Containerd]) -> None:
    registry, snap, ctd = stack
    ref = f"{registry.host}/debian:nydus"
    with Client(str(ctd.address), "test") as client:
        report = Puller(client, RegistrySource(parse_registry(ref), plain_http=True), SNAPSHOTTER).pull()
    assert report.layers and all(layer.lazy for layer in report.layers[:-1]), report
    want = image_digests()
    script = "; ".join(f"sha256sum /{p}" for p in CHECKED)
    out = ctd.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "fscache-1", "sh", "-c", script).stdout
    got = {line.split()[1].lstrip("/"): line.split()[0] for line in out.splitlines()}
    assert got == want, out

    # The lower dir was the image's EROFS over fscache (an fsid, no block device) under
    # the snapshotter's root; it stays mounted for the next container.
    mounts = [m for m in erofs_mounts() if m[0].startswith(str(snap.root))]
    assert len(mounts) == 1 and "fsid=" in mounts[0][2], erofs_mounts()
    out = ctd.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "fscache-2", "cat", "/etc/debian_version").stdout
    assert out.strip() and "fsid=" in erofs_mounts()[0][2]

    # The daemon read the data blob by ranges (206), never whole (200).
    data = {layer.digest for layer in report.layers if layer.lazy}
    served = [(p, st) for method, p, st in registry.request_log() if method == "GET" and p.split("/")[-1] in data]
    assert served and {st for _, st in served} == {206}, served

    ctd.ctr("images", "rm", "--sync", ref)
    assert not [m for m in erofs_mounts() if m[0].startswith(str(snap.root))], "EROFS is unmounted with its image"
    assert ctd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()[1:] == []
