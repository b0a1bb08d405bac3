"""OCI image layout directories (image-spec `image-layout.md`): `oci-layout`, `index.json`
and content-addressed `blobs/<alg>/<hex>`. Reading checks every blob against its digest
and bounds document sizes; writing puts blobs in place atomically and the index last, so
a reader never sees a manifest whose blobs are missing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

from nydus_hybrid.convert import oci
from nydus_hybrid.errors import BlobMissingError, DigestMismatchError, InvalidArgumentError

MAX_DOCUMENT = 4 << 20  # manifests, configs and indexes are small; a bigger one is hostile


class Layout:
    def __init__(self, root: Union[str, os.PathLike[str]]) -> None:
        self.root = Path(root)

    def blob_path(self, digest: str) -> Path:
        alg, _, hexpart = digest.partition(":")
        if alg != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
            raise InvalidArgumentError(errno.EINVAL, f"unsupported or malformed digest {digest!r}")
        return self.root / "blobs" / alg / hexpart

    # -- reading

    def index(self) -> Dict[str, Any]:
        return self._document(self.root / "index.json", "index.json")

    def document(self, desc: Dict[str, Any]) -> Dict[str, Any]:
        """The JSON document a descriptor names, checked against its digest."""
        path = self.blob_path(desc["digest"])
        doc = self._document(path, desc["digest"])
        verify_file(path, desc["digest"], desc.get("size"))
        return doc

    def layer(self, desc: Dict[str, Any]) -> Path:
        """The file of a layer, checked against its descriptor's digest and size."""
        path = self.blob_path(desc["digest"])
        verify_file(path, desc["digest"], desc.get("size"))
        return path

    def _document(self, path: Path, what: str) -> Dict[str, Any]:
        try:
            size = path.stat().st_size
            if size > MAX_DOCUMENT:
                raise InvalidArgumentError(
                    errno.EINVAL, f"{what}: {size} bytes, more than the {MAX_DOCUMENT} a document may have"
                )
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise InvalidArgumentError(errno.EINVAL, f"{what}: not in the layout at {self.root}") from None
        except ValueError as e:
            raise InvalidArgumentError(errno.EINVAL, f"{what}: not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise InvalidArgumentError(errno.EINVAL, f"{what}: not a JSON object")
        return doc

    # -- writing

    def put(self, data: bytes, digest: Optional[str] = None) -> str:
        digest = digest or oci.sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists():
            _atomic_write(path, data)
        return digest

    def put_file(self, src: Path, digest: str) -> None:
        """Move a finished blob file in under its digest (a copy if it is elsewhere)."""
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return
        try:
            os.link(src, path)
        except OSError:
            _atomic_write(path, src.read_bytes())

    def publish(self, index: Dict[str, Any]) -> None:
        """Write `oci-layout` and then `index.json`: the step that makes the image visible."""
        _atomic_write(self.root / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _atomic_write(self.root / "index.json", json.dumps(index, indent=2).encode())


def verify_file(path: Path, digest: str, size: Optional[int]) -> None:
    h = hashlib.sha256()
    n = 0
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                n += len(block)
    except FileNotFoundError:
        raise BlobMissingError(errno.ENOENT, f"blob {digest} is missing") from None
    if size is not None and n != size:
        raise DigestMismatchError(errno.EIO, f"blob {digest}: {n} bytes, its descriptor says {size}")
    if "sha256:" + h.hexdigest() != digest:
        raise DigestMismatchError(errno.EIO, f"blob {digest}: its bytes do not match its digest")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
