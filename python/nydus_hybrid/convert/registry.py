"""A registry repository as a conversion source or target, over the core's registry client
(`_core.RegistryClient`: the same auth, TLS and retry code as the lazy-read backend).
Credentials come from `--*-creds`, else docker's `config.json` for the host, else none."""

from __future__ import annotations

import base64
import errno
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from nydus_hybrid.blobs import registry_client
from nydus_hybrid.convert import oci
from nydus_hybrid.convert.reference import RegistryRef
from nydus_hybrid.errors import InvalidArgumentError

ACCEPT = [oci.MANIFEST, oci.INDEX, oci.DOCKER_MANIFEST, oci.DOCKER_MANIFEST_LIST]
# A layer transfer may take long; the core caps one request at an hour.
TRANSFER_TIMEOUT = 3600


def client_config(
    ref: RegistryRef, *, plain_http: bool = False, insecure: bool = False, creds: Optional[str] = None
) -> Dict[str, Any]:
    """The nydusd-shaped configuration of a registry backend for `ref`; `creds` is
    `USER:PASSWORD`."""
    reg: Dict[str, Any] = {
        "scheme": "http" if plain_http else "https",
        "host": ref.api_host,
        "repo": ref.repo,
        "skip_verify": insecure,
        "timeout": TRANSFER_TIMEOUT,
        "connect_timeout": 10,
        "retry_limit": 2,
    }
    if creds is not None:
        if ":" not in creds:
            raise InvalidArgumentError(errno.EINVAL, "credentials must be USER:PASSWORD")
        reg["auth"] = base64.b64encode(creds.encode()).decode()
    return {"version": 2, "backend": {"type": "registry", "registry": reg}}


class Registry:
    """One repository; `ref` names the image read (as a source) or the tag written (as a
    target)."""

    def __init__(
        self, ref: RegistryRef, *, plain_http: bool = False, insecure: bool = False, creds: Optional[str] = None
    ) -> None:
        self.ref = ref
        self.config = client_config(ref, plain_http=plain_http, insecure=insecure, creds=creds)
        self.client = registry_client(self.config)

    def __str__(self) -> str:
        return str(self.ref)

    # -- as a source

    def root(self) -> Tuple[str, bytes]:
        media_type, _, body = self.client.get_manifest(self.ref.reference, ACCEPT, oci.MAX_DOCUMENT)
        return media_type, body

    def document_bytes(self, desc: Dict[str, Any]) -> bytes:
        digest, size = oci.checked_descriptor(desc)
        if size is not None and size > oci.MAX_DOCUMENT:
            raise InvalidArgumentError(
                errno.EINVAL, f"{digest}: {size} bytes, more than the {oci.MAX_DOCUMENT} a document may have"
            )
        if desc.get("mediaType") in ACCEPT:
            return self.client.get_manifest(digest, ACCEPT, oci.MAX_DOCUMENT)[2]
        return self._small_blob(digest, size)

    def layer(self, desc: Dict[str, Any], work: Path) -> Tuple[Path, bool]:
        digest, size = oci.checked_descriptor(desc)
        dest = work / digest.replace(":", "-")
        self.client.fetch_blob(digest, str(dest), size)
        return dest, True

    def _small_blob(self, digest: str, size: Optional[int]) -> bytes:
        with tempfile.TemporaryDirectory(prefix="nydus-doc-") as d:
            dest = Path(d) / "doc"
            self.client.fetch_blob(digest, str(dest), size, oci.MAX_DOCUMENT)
            return dest.read_bytes()

    def backend(self) -> Dict[str, Any]:
        """The nydusd backend that reads this repository's blobs lazily."""
        return dict(self.config["backend"])

    # -- as a target

    def has_blob(self, digest: str) -> bool:
        return self.client.blob_exists(digest)

    def blob_size(self, digest: str) -> Optional[int]:
        return self.client.blob_size(digest)

    def put_file(self, path: Path, digest: str) -> bool:
        got, sent = self.client.push_blob(str(path))
        if got != digest:
            raise InvalidArgumentError(errno.EIO, f"{path}: hashes to {got}, expected {digest}")
        return sent

    def put(self, data: bytes) -> str:
        digest = oci.sha256_digest(data)
        if not self.client.blob_exists(digest):
            with tempfile.NamedTemporaryFile(prefix="nydus-blob-") as f:
                f.write(data)
                f.flush()
                self.put_file(Path(f.name), digest)
        return digest

    def put_manifest(self, data: bytes, media_type: str) -> str:
        """Store a manifest by its digest: present, but not yet under any tag."""
        return self.client.put_manifest(oci.sha256_digest(data), media_type, data)

    def publish(self, data: bytes, media_type: str) -> None:
        """Point the tag at the document: the one step that makes the image visible."""
        self.client.put_manifest(self.ref.tag or oci.sha256_digest(data), media_type, data)
