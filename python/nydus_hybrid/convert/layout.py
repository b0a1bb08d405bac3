"""OCI image layout directories (image-spec `image-layout.md`): `oci-layout`, `index.json`
and content-addressed `blobs/<alg>/<hex>`. Reading checks every blob against its digest
and bounds document sizes; writing puts blobs in place atomically and the index last, so
a reader never sees a manifest whose blobs are missing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple, Union

from nydus_hybrid.convert import oci
from nydus_hybrid.errors import BlobMissingError, DigestMismatchError, InvalidArgumentError

REF_NAME = "org.opencontainers.image.ref.name"


class Layout:
    """A layout directory; `tag` picks the `index.json` entry read (as a source) or names
    the entry written (as a target)."""

    def __init__(self, root: Union[str, os.PathLike[str]], tag: Optional[str] = None) -> None:
        self.dir = Path(root)
        self.tag = tag

    def __str__(self) -> str:
        return f"oci:{self.dir}" + (f":{self.tag}" if self.tag else "")

    def blob_path(self, digest: str) -> Path:
        oci.checked_descriptor({"digest": digest})
        alg, _, hexpart = digest.partition(":")
        return self.dir / "blobs" / alg / hexpart

    # -- as a source

    def index(self) -> Dict[str, Any]:
        try:
            data = (self.dir / "index.json").read_bytes()
        except FileNotFoundError:
            raise InvalidArgumentError(errno.EINVAL, f"{self.dir}: no index.json, not an OCI image layout") from None
        return oci.parse_document(data, "index.json")

    def root(self) -> Tuple[str, bytes]:
        """What this name points at: the index entry with the tag, the only entry, or else
        `index.json` itself (an index of platforms)."""
        index = self.index()
        entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
        if self.tag:
            entries = [m for m in entries if m.get("annotations", {}).get(REF_NAME) == self.tag]
            if not entries:
                raise InvalidArgumentError(errno.EINVAL, f"{self}: no image tagged {self.tag!r}")
        if len(entries) == 1:
            digest, size = oci.checked_descriptor(entries[0])
            return str(entries[0].get("mediaType", oci.MANIFEST)), self._read(digest, size, oci.MAX_DOCUMENT)
        return oci.INDEX, json.dumps({**index, "mediaType": oci.INDEX}).encode()

    def document_bytes(self, desc: Dict[str, Any]) -> bytes:
        """The bytes of a manifest, index or config (checked by `oci.parse_document`)."""
        digest, size = oci.checked_descriptor(desc)
        return self._read(digest, size, oci.MAX_DOCUMENT)

    def layer(self, desc: Dict[str, Any], work: Path) -> Tuple[Path, bool]:
        """The file of a layer, checked against its descriptor's digest and size (it stays
        where it is: the returned flag says it is not a temporary)."""
        digest, size = oci.checked_descriptor(desc)
        path = self.blob_path(digest)
        verify_file(path, digest, size)
        return path, False

    def backend(self) -> Dict[str, Any]:
        """The nydusd backend that reads this layout's blobs (localfs)."""
        return {"type": "localfs", "localfs": {"dir": str(self.dir / "blobs" / "sha256")}}

    def _read(self, digest: str, size: Optional[int], limit: int) -> bytes:
        path = self.blob_path(digest)
        try:
            n = path.stat().st_size
        except FileNotFoundError:
            raise BlobMissingError(errno.ENOENT, f"blob {digest} is missing from {self.dir}") from None
        if n > limit:
            raise InvalidArgumentError(errno.EINVAL, f"{digest}: {n} bytes, more than the {limit} a document may have")
        return path.read_bytes()

    # -- as a target

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def blob_size(self, digest: str) -> Optional[int]:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def put(self, data: bytes) -> str:
        digest = oci.sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists():
            _atomic_write(path, data)
        return digest

    def put_file(self, src: Path, digest: str) -> bool:
        """Move a finished blob file in under its digest (a link, or a streamed copy if it
        is on another filesystem). Returns whether it was new."""
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return False
        try:
            os.link(src, path)
        except FileExistsError:
            return False
        except OSError:
            _atomic_copy(src, path)
        return True

    def put_manifest(self, data: bytes, media_type: str) -> str:
        return self.put(data)

    def publish(self, data: bytes, media_type: str) -> None:
        """Add the document to `index.json` (replacing an entry with the same tag, or the
        same digest), after `oci-layout`: the step that makes the image visible."""
        digest = self.put(data)
        index: Dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": []}
        if (self.dir / "index.json").exists():
            index = self.index()

        def replaced(m: Any) -> bool:
            if not isinstance(m, dict):
                return True
            if self.tag:
                return bool(m.get("annotations", {}).get(REF_NAME) == self.tag)
            return bool(m.get("digest") == digest)

        entry = oci.descriptor(media_type, data, {REF_NAME: self.tag} if self.tag else None)
        index["manifests"] = [*(m for m in index.get("manifests", []) if not replaced(m)), entry]
        _atomic_write(self.dir / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _atomic_write(self.dir / "index.json", json.dumps(index, indent=2).encode())


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
    _atomic(path, lambda out: out.write(data))


def _atomic_copy(src: Path, path: Path) -> None:
    def copy(out: BinaryIO) -> None:
        with open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    _atomic(path, copy)


def _atomic(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Write `path` through a temporary file in its directory, synced and renamed in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
