"""What `convert` needs of where images come from and go to. Three sources (`Layout`,
`Registry`, `DockerArchive`) and two targets (`Layout`, `Registry`) have these shapes;
`open_source` / `open_target` make one from a name (`reference.parse`)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any, Dict, Optional, Protocol, Tuple

from nydus_hybrid.convert import reference
from nydus_hybrid.convert.archive import DockerArchive
from nydus_hybrid.convert.layout import Layout
from nydus_hybrid.convert.registry import Registry
from nydus_hybrid.errors import InvalidArgumentError


class ImageSource(Protocol):
    def root(self) -> Tuple[str, bytes]:
        """The media type and bytes of what the name points at (a manifest or an index)."""

    def document_bytes(self, desc: Dict[str, Any]) -> bytes:
        """A manifest, index or config, bounded in size (checked by `oci.parse_document`)."""

    def layer(self, desc: Dict[str, Any], work: Path) -> Tuple[Path, bool]:
        """A local file with the layer's bytes, checked against its digest and size, and
        whether it is a temporary (in `work`) the caller removes."""


class ImageTarget(Protocol):
    def has_blob(self, digest: str) -> bool: ...

    def blob_size(self, digest: str) -> Optional[int]:
        """The size of a blob the target holds, or None."""

    def put_file(self, path: Path, digest: str) -> bool:
        """Store a blob file (streamed); returns whether it was sent (False: already there)."""

    def put(self, data: bytes) -> str:
        """Store a small blob; returns its digest."""

    def put_manifest(self, data: bytes, media_type: str) -> str:
        """Store a manifest by digest, not yet visible under the target's name."""

    def publish(self, data: bytes, media_type: str) -> None:
        """Make the document visible under the target's name: the last step."""


def open_source(
    name: str, *, plain_http: bool = False, insecure: bool = False, creds: Optional[str] = None
) -> ImageSource:
    ref = reference.parse(name)
    if isinstance(ref, reference.LayoutRef):
        if not Path(ref.path).is_dir():
            raise InvalidArgumentError(errno.ENOENT, f"{name}: no such directory")
        return Layout(ref.path, ref.tag)
    if isinstance(ref, reference.ArchiveRef):
        return DockerArchive(ref.path)
    return Registry(ref, plain_http=plain_http, insecure=insecure, creds=creds)


def open_target(
    name: str, *, plain_http: bool = False, insecure: bool = False, creds: Optional[str] = None
) -> ImageTarget:
    ref = reference.parse(name)
    if isinstance(ref, reference.ArchiveRef):
        raise InvalidArgumentError(errno.EINVAL, f"{name}: a docker archive can be a source only")
    if isinstance(ref, reference.LayoutRef):
        return Layout(ref.path, ref.tag)
    if ref.digest:
        raise InvalidArgumentError(errno.EINVAL, f"{name}: a target is a tag, not a digest")
    return Registry(ref, plain_http=plain_http, insecure=insecure, creds=creds)
