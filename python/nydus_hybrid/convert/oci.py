"""OCI image-spec names and descriptors, and the Nydus ones nydusify writes next to them
(spec rafs-v6-format.md §8)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Optional

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
ANNOTATION_UNCOMPRESSED = "containerd.io/uncompressed"
ANNOTATION_NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"
ANNOTATION_NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
ANNOTATION_FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
# In a multi-platform index, the Nydus manifest's platform carries this OS feature.
NYDUS_OS_FEATURE = "nydus.remoteimage.v1"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(
    media_type: str, data: bytes, annotations: Optional[Dict[str, str]] = None, **extra: Any
) -> Dict[str, Any]:
    """The descriptor of `data` (its digest and size), with annotations if any."""
    d: Dict[str, Any] = {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}
    if annotations:
        d["annotations"] = dict(annotations)
    d.update(extra)
    return d


def canonical(doc: Dict[str, Any]) -> bytes:
    """The bytes a document is stored and digested as: compact JSON, keys sorted, so that
    the same document always has the same digest."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
