"""OCI image-spec names and descriptors, and the Nydus ones nydusify writes next to them
(spec rafs-v6-format.md §8)."""

from __future__ import annotations

import errno
import hashlib
import json
import re
from typing import Any, Dict, Optional, Tuple

from nydus_hybrid.errors import DigestMismatchError, InvalidArgumentError

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
ANNOTATION_UNCOMPRESSED = "containerd.io/uncompressed"
ANNOTATION_NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"
ANNOTATION_NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
ANNOTATION_FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
LAYER_TYPES = {LAYER_TAR, LAYER_TAR_GZIP, LAYER_TAR_ZSTD, DOCKER_LAYER}

MAX_DOCUMENT = 4 << 20  # manifests, configs and indexes are small; a bigger one is hostile
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")

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


def checked_descriptor(desc: Any) -> Tuple[str, Optional[int]]:
    """The digest and size of a descriptor from untrusted JSON, checked for shape."""
    if not isinstance(desc, dict):
        raise InvalidArgumentError(errno.EINVAL, f"a descriptor must be a JSON object, not {type(desc).__name__}")
    digest, size = desc.get("digest"), desc.get("size")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise InvalidArgumentError(errno.EINVAL, f"unsupported or malformed digest {digest!r}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidArgumentError(errno.EINVAL, f"descriptor of {digest}: bad size {size!r}")
    return digest, size


def parse_document(data: bytes, what: str, size: Optional[int] = None) -> Dict[str, Any]:
    """A manifest, index or config: bounded, JSON, an object, and when `what` is a digest,
    hashing to it."""
    if len(data) > MAX_DOCUMENT:
        raise InvalidArgumentError(
            errno.EINVAL, f"{what}: {len(data)} bytes, more than the {MAX_DOCUMENT} a document may have"
        )
    if _SHA256.match(what) and sha256_digest(data) != what:
        raise DigestMismatchError(errno.EIO, f"{what}: its bytes do not match its digest")
    if size is not None and len(data) != size:
        raise DigestMismatchError(errno.EIO, f"{what}: {len(data)} bytes, its descriptor says {size}")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise InvalidArgumentError(errno.EINVAL, f"{what}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InvalidArgumentError(errno.EINVAL, f"{what}: not a JSON object")
    return doc
