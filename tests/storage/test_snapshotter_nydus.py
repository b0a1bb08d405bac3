"""A Nydus image through our snapshotter, driven over gRPC exactly as containerd's unpacker
and runtime drive it (spec A2.3, A9.2): every data layer's Prepare, labelled with
`snapshot.ref` and `nydus-blob`, answers ALREADY_EXISTS and is committed without a byte
downloaded; the bootstrap layer is unpacked into its snapshot; the container's Prepare over
it mounts the image through the daemon manager (our daemon, from the real registry) and
returns an overlay on that mount. The rootfs is the OCI image's, the registry saw only
ranged reads of the data blobs, and removing the meta layer unmounts the image."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import time
from pathlib import Path

import grpc
import pytest

from nydus_hybrid import treecmp
from nydus_hybrid.convert.convert import ConvertOptions, convert
from nydus_hybrid.convert.store import open_source, open_target
from tests.helpers.layers import flatten, tar_dir, write_layout
from tests.helpers.mounts import is_mounted
from tests.helpers.snapshots import (
    CheckingReader,
    SnapshotterProcess,
    daemon_pids,
    kill_daemon_and_wait,
    mount_all,
    umount,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")

REF = "containerd.io/snapshot.ref"


def small_layers(tmp: Path):
    base, top = tmp / "base", tmp / "top"
    (base / "etc").mkdir(parents=True)
    (base / "etc/os").write_bytes(b"nydus-hybrid test\n")
    (base / "bin").mkdir()
    (base / "bin/data").write_bytes(os.urandom(2 << 20))
    (base / "gone").write_bytes(b"removed above\n")
    (top / "etc").mkdir(parents=True)
    (top / ".wh.gone").write_bytes(b"")
    (top / "etc/app.conf").write_bytes(b"answer = 42\n")
    return [tar_dir(base, tmp / "base.tar"), tar_dir(top, tmp / "top.tar")]


def pull(c, registry, image: str, m, tmp_path: Path) -> str:
    """What containerd's unpacker does for the image `m` at `image`, with the CRI labels:
    data layers answered ALREADY_EXISTS (checked: none is downloaded), the bootstrap layer
    unpacked. Returns the meta layer's chain id."""
    start = len(registry.request_log())
    cri = {"containerd.io/snapshot/cri.image-ref": image}
    parent = ""
    for i, d in enumerate(m["layers"][:-1]):
        labels = {
            **cri,
            REF: f"sha256:chain{i}",
            **d["annotations"],
            "containerd.io/snapshot/cri.layer-digest": d["digest"],
        }
        labels = {k: v for k, v in labels.items() if k.startswith("containerd.io/snapshot")}
        with pytest.raises(grpc.RpcError) as e:
            c.prepare(f"extract-{i}", parent, labels)
        assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert c.stat(f"sha256:chain{i}").kind == 3
        parent = f"sha256:chain{i}"
    data = [d["digest"] for d in m["layers"][:-1]]
    pulled = [p for meth, p, _ in registry.request_log()[start:] if meth == "GET" and any(x in p for x in data)]
    assert pulled == [], "no data blob was downloaded during the pull"
    # The bootstrap layer: containerd mounts what Prepare returns and applies the tar.
    boot = m["layers"][-1]
    labels = {**cri, REF: "sha256:chain-meta", **boot["annotations"]}
    labels = {k: v for k, v in labels.items() if k.startswith("containerd.io/snapshot")}
    target = tmp_path / "unpack"
    target.mkdir()
    mount_all(c.prepare("extract-meta", parent, labels), target)
    try:
        layer = open_source(image, plain_http=True).layer(boot, tmp_path)[0]
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.read_bytes()))) as t:
            t.extractall(target, filter="data")
    finally:
        umount(target)
    c.commit("sha256:chain-meta", "extract-meta", labels)
    return "sha256:chain-meta"


def converted(tmp_path: Path, registry):
    """The small image converted into the registry: (reference, Nydus manifest, rootfs)."""
    tars = small_layers(tmp_path)
    write_layout(tmp_path / "oci", tars, ["gzip", "gzip"])
    image = f"{registry.host}/app:nydus"
    convert(open_source(f"oci:{tmp_path / 'oci'}"), open_target(image, plain_http=True), ConvertOptions())
    m = json.loads(open_source(image, plain_http=True).root()[1])
    rootfs = tmp_path / "rootfs"
    flatten(tars, rootfs)
    return image, m, rootfs


def test_a_nydus_image_mounts_lazily_under_the_snapshotter(tmp_path, registry):
    image, m, rootfs = converted(tmp_path, registry)
    snap = SnapshotterProcess(tmp_path / "snroot", extra=["--plain-http-registry", registry.host]).start()
    c = snap.client()
    try:
        pull(c, registry, image, m, tmp_path)
        # The container.
        (mount,) = c.prepare("container-1", "sha256:chain-meta")
        lower = next(o for o in mount.options if o.startswith("lowerdir="))[len("lowerdir=") :]
        assert mount.type == "overlay" and lower.startswith(str(snap.root / "snapshots"))
        assert is_mounted(lower), "the image's RAFS instance serves the lower dir"
        before = len(registry.request_log())
        ctr_root = tmp_path / "ctr"
        ctr_root.mkdir()
        mount_all([mount], ctr_root)
        try:
            diff = treecmp.compare(str(rootfs), str(ctr_root))
            assert diff.differences == [] and diff.entries >= 6, diff.differences[:10]
            (ctr_root / "written").write_bytes(b"by the container\n")
            # Killing the snapshotter leaves the image's daemon serving (A10, A13); the
            # restarted snapshotter finds its snapshots and the mounted instance again.
            c.close()
            snap.kill()
            snap.start()
            c = snap.client()
            assert (ctr_root / "etc/app.conf").read_bytes() == (rootfs / "etc/app.conf").read_bytes()
            assert is_mounted(lower)
        finally:
            umount(ctr_root)
        time.sleep(0.2)  # the access log line follows its response
        gets = [(p, s) for meth, p, s in registry.request_log()[before:] if meth == "GET" and "/blobs/" in p]
        assert gets and all(s == 206 for _, s in gets), gets
        # Mounts says the same again, after the restart too.
        assert [tuple(x.options) for x in c.mounts("container-1")] == [tuple(mount.options)]
        # Usage of the base data layer counts what the blob cache holds of its blob (the
        # 2 MiB file was read whole above).
        assert c.usage("sha256:chain0").size >= 2 << 20
        c.remove("container-1")
        c.remove("sha256:chain-meta")
        assert not is_mounted(lower), "removing the meta layer unmounts the image"
    finally:
        c.close()
        snap.stop()
        snap.reap_daemons()


def test_a_corrupt_bootstrap_or_a_missing_image_reference_fails_cleanly(tmp_path, registry):
    """The container's Prepare gets a clear status and leaves no snapshot and no mount."""
    snap = SnapshotterProcess(tmp_path / "snroot", extra=["--plain-http-registry", registry.host]).start()
    c = snap.client()
    try:
        for name, labels, boot in [
            ("corrupt", {"containerd.io/snapshot/cri.image-ref": f"{registry.host}/x:1"}, os.urandom(8192)),
            ("no-ref", {}, b""),
        ]:
            meta = {REF: f"sha256:{name}", "containerd.io/snapshot/nydus-bootstrap": "true", **labels}
            target = tmp_path / f"unpack-{name}"
            target.mkdir()
            mount_all(c.prepare(f"extract-{name}", "", meta), target)
            (target / "image").mkdir()
            (target / "image/image.boot").write_bytes(boot)
            umount(target)
            c.commit(f"sha256:{name}", f"extract-{name}", meta)
            with pytest.raises(grpc.RpcError) as e:
                c.prepare(f"container-{name}", f"sha256:{name}")
            want = grpc.StatusCode.UNAVAILABLE if name == "corrupt" else grpc.StatusCode.FAILED_PRECONDITION
            assert e.value.code() == want, e.value.details()
            with pytest.raises(grpc.RpcError) as e:
                c.stat(f"container-{name}")
            assert e.value.code() == grpc.StatusCode.NOT_FOUND, "the failed Prepare left no snapshot"
        assert sorted(i.name for i in c.list()) == ["sha256:corrupt", "sha256:no-ref"]
        assert len(os.listdir(snap.root / "snapshots")) == 2
    finally:
        c.close()
        snap.stop()
        snap.reap_daemons()


def test_a_killed_daemon_fails_over_under_a_reading_container(tmp_path, registry):
    """A13's failover scenario: the image's daemon is killed (-9) twice while a container
    reads every file in a loop (caches dropped each pass, so reads reach FUSE); with the
    failover policy no read fails and every byte is right."""
    image, m, rootfs = converted(tmp_path, registry)
    extra = ["--plain-http-registry", registry.host, "--recover-policy", "failover"]
    snap = SnapshotterProcess(tmp_path / "snroot", extra=extra).start()
    c = snap.client()
    try:
        meta = pull(c, registry, image, m, tmp_path)
        (mount,) = c.prepare("container-1", meta)
        ctr_root = tmp_path / "ctr"
        ctr_root.mkdir()
        mount_all([mount], ctr_root)
        want = {p.relative_to(rootfs): p.read_bytes() for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink()}
        try:
            with CheckingReader(ctr_root, want) as reader:
                for _ in range(2):
                    kill_daemon_and_wait(snap.root, timeout=30)
                    reader.wait_passes(2, timeout=60)
        finally:
            umount(ctr_root)
        assert reader.errors == [], reader.errors[:5]
        assert reader.passes >= 4
        c.remove("container-1")
        c.remove(meta)  # which stops the image's daemon (daemons otherwise outlive the snapshotter)
        assert daemon_pids(snap.root) == []
    finally:
        c.close()
        snap.stop()
        snap.reap_daemons()
