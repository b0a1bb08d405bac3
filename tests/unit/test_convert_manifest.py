"""The pieces of a converted Nydus image (nydus_hybrid.convert): the bootstrap layer, the
data-layer descriptors, the config, the manifest and the index entry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import Any, Dict

import pytest

import nydus_hybrid
from nydus_hybrid.convert import manifest, oci


def test_the_bootstrap_layer_holds_image_boot_and_is_reproducible(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "hello").write_bytes(b"hello\n")
    nydus_hybrid.build(tmp_path / "src", tmp_path / "boot", tmp_path / "blobs", progress=False)
    boot = (tmp_path / "boot").read_bytes()
    layer, diff_id = manifest.bootstrap_layer(boot)
    assert manifest.bootstrap_layer(boot) == (layer, diff_id), "same bytes every time"
    tar = gzip.decompress(layer)
    assert diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        members = t.getmembers()
        assert [(m.name, m.isdir()) for m in members] == [("image", True), ("image/image.boot", False)]
        f = t.extractfile("image/image.boot")
        assert f is not None
        extracted = f.read()
    assert extracted == boot
    (tmp_path / "again.boot").write_bytes(extracted)
    assert nydus_hybrid.Image.open(tmp_path / "again.boot", tmp_path / "blobs").read("/hello") == b"hello\n"
    d = manifest.bootstrap_descriptor(layer, diff_id)
    assert d["mediaType"] == oci.LAYER_TAR_GZIP and d["size"] == len(layer)
    assert d["annotations"] == {
        "containerd.io/snapshot/nydus-bootstrap": "true",
        "containerd.io/snapshot/nydus-fs-version": "6",
        "containerd.io/uncompressed": diff_id,
    }


def test_a_data_layer_is_its_own_diff_id():
    blob = b"not really a blob"
    d = manifest.blob_layer(blob)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert d == {
        "mediaType": "application/vnd.oci.image.layer.nydus.blob.v1",
        "digest": digest,
        "size": len(blob),
        "annotations": {"containerd.io/snapshot/nydus-blob": "true", "containerd.io/uncompressed": digest},
    }


def test_the_config_gets_the_new_diff_ids_and_keeps_the_rest():
    source: Dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:aa", "sha256:bb"]},
        "history": [{"created_by": "ADD base"}, {"created_by": "RUN x"}],
    }
    layers = [manifest.blob_layer(b"one"), manifest.blob_layer(b"two")]
    boot_layer, diff_id = manifest.bootstrap_layer(b"boot")
    layers.append(manifest.bootstrap_descriptor(boot_layer, diff_id))
    cfg = manifest.nydus_config(source, layers)
    assert cfg["rootfs"]["diff_ids"] == [layers[0]["digest"], layers[1]["digest"], diff_id]
    assert cfg["history"] == source["history"] and cfg["config"] == source["config"]
    assert source["rootfs"]["diff_ids"] == ["sha256:aa", "sha256:bb"], "the source is not changed"
    config = oci.canonical(cfg)
    m = manifest.nydus_manifest(config, layers, {})
    assert m["config"]["digest"] == oci.sha256_digest(config)
    assert m["layers"][-1]["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"
    assert json.loads(oci.canonical(m)) == m
    with pytest.raises(ValueError, match="bootstrap layer"):
        manifest.nydus_manifest(config, layers[:2], {})


def test_merge_platform_adds_one_nydus_entry_per_platform():
    amd64 = {"architecture": "amd64", "os": "linux"}
    oci_entry = oci.descriptor(oci.MANIFEST, b"oci manifest", platform=amd64)
    index = {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": [oci_entry]}
    once = manifest.merge_into_index(index, b"nydus manifest 1", amd64)
    assert once["manifests"][0] == oci_entry
    assert once["manifests"][1]["platform"] == {**amd64, "os.features": ["nydus.remoteimage.v1"]}
    twice = manifest.merge_into_index(once, b"nydus manifest 2", amd64)
    assert len(twice["manifests"]) == 2, "a second conversion replaces the first's entry"
    assert twice["manifests"][1]["digest"] == oci.sha256_digest(b"nydus manifest 2")
    arm = manifest.merge_into_index(twice, b"arm", {"architecture": "arm64", "os": "linux"})
    assert len(arm["manifests"]) == 3
    assert index["manifests"] == [oci_entry], "the source index is not changed"
