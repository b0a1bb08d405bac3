"""A Nydus image from converted layers, shaped as nydusify writes it: the data layers (each
a layer blob carrying its bootstrap), then the bootstrap layer (a tar+gzip holding
`image/image.boot`), a config whose `rootfs.diff_ids` match them with the source's history
kept, the manifest, and the entry that adds it to a multi-platform index."""

from __future__ import annotations

import copy
import gzip
import io
import os
import tarfile
from typing import Any, Dict, List, Sequence, Tuple

from nydus_hybrid.convert import oci

BOOTSTRAP_NAME = "image/image.boot"


def bootstrap_layer(bootstrap: bytes) -> Tuple[bytes, str]:
    """The bootstrap layer: a tar of directory `image` and `image/image.boot`, gzipped; the
    same bootstrap always gives the same bytes (zero times and owners). Returns the layer
    and its diff id (the digest of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        d = tarfile.TarInfo("image")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
        t.addfile(d)
        f = tarfile.TarInfo(BOOTSTRAP_NAME)
        f.size, f.mode, f.mtime = len(bootstrap), 0o644, 0
        t.addfile(f, io.BytesIO(bootstrap))
    tar = raw.getvalue()
    return gzip.compress(tar, mtime=0), oci.sha256_digest(tar)


def blob_layer(blob: bytes) -> Dict[str, Any]:
    """The descriptor of a Nydus data layer: the blob is not compressed as a whole, so its
    own digest is its diff id."""
    return blob_descriptor(oci.sha256_digest(blob), len(blob))


def blob_layer_of(path: os.PathLike[str], digest: str) -> Dict[str, Any]:
    """`blob_layer` for a blob file whose digest is known (no need to read it again)."""
    return blob_descriptor(digest, os.stat(path).st_size)


def blob_descriptor(digest: str, size: int) -> Dict[str, Any]:
    """A Nydus data layer of a known digest and size (a chunk dictionary's blob, say)."""
    return {
        "mediaType": oci.NYDUS_BLOB,
        "digest": digest,
        "size": size,
        "annotations": {oci.ANNOTATION_NYDUS_BLOB: "true", oci.ANNOTATION_UNCOMPRESSED: digest},
    }


def bootstrap_descriptor(layer: bytes, diff_id: str) -> Dict[str, Any]:
    return oci.descriptor(
        oci.LAYER_TAR_GZIP,
        layer,
        {
            oci.ANNOTATION_NYDUS_BOOTSTRAP: "true",
            oci.ANNOTATION_FS_VERSION: "6",
            oci.ANNOTATION_UNCOMPRESSED: diff_id,
        },
    )


def nydus_config(source: Dict[str, Any], layers: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The source config with `rootfs.diff_ids` replaced by those of `layers` (data layers
    then the bootstrap layer, as the manifest lists them); architecture, OS, the runtime
    config and the history are kept."""
    cfg = copy.deepcopy(source)
    cfg["rootfs"] = {"type": "layers", "diff_ids": [d["annotations"][oci.ANNOTATION_UNCOMPRESSED] for d in layers]}
    return cfg


def nydus_manifest(config: bytes, layers: Sequence[Dict[str, Any]], annotations: Dict[str, str]) -> Dict[str, Any]:
    """The Nydus manifest: `layers` must end with the bootstrap layer."""
    last = layers[-1] if layers else {}
    if last.get("annotations", {}).get(oci.ANNOTATION_NYDUS_BOOTSTRAP) != "true":
        raise ValueError("the last layer of a Nydus manifest must be its bootstrap layer")
    doc: Dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": oci.MANIFEST,
        "config": oci.descriptor(oci.CONFIG, config),
        "layers": list(layers),
    }
    if annotations:
        doc["annotations"] = dict(annotations)
    return doc


def merge_into_index(index: Dict[str, Any], manifest: bytes, platform: Dict[str, Any]) -> Dict[str, Any]:
    """`index` with the Nydus manifest added for `platform` (`--merge-platform`): its entry's
    platform gains the `nydus.remoteimage.v1` OS feature, and an earlier Nydus entry for the
    same platform is replaced, so converting twice does not pile entries up."""
    plat = copy.deepcopy(platform)
    plat["os.features"] = sorted({*plat.get("os.features", []), oci.NYDUS_OS_FEATURE})
    entry = oci.descriptor(oci.MANIFEST, manifest, platform=plat)

    def same_nydus(m: Dict[str, Any]) -> bool:
        p = m.get("platform", {})
        base = {k: v for k, v in p.items() if k != "os.features"}
        want = {k: v for k, v in plat.items() if k != "os.features"}
        return oci.NYDUS_OS_FEATURE in p.get("os.features", []) and base == want

    out = copy.deepcopy(index)
    kept: List[Dict[str, Any]] = [m for m in out.get("manifests", []) if not same_nydus(m)]
    out["manifests"] = [*kept, entry]
    out.setdefault("schemaVersion", 2)
    out.setdefault("mediaType", oci.INDEX)
    return out
