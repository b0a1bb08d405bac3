"""A `docker save` tarball as a conversion source: `manifest.json` names the config and the
layer tars. Legacy archives keep layers at `<id>/layer.tar` (named by their diff id),
newer ones at `blobs/sha256/<hex>` (named by their digest, possibly compressed). Members
are read in place; every one is checked against its digest as it is copied out."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from nydus_hybrid.convert import oci
from nydus_hybrid.errors import DigestMismatchError, InvalidArgumentError

_MAGIC = [(b"\x1f\x8b", oci.LAYER_TAR_GZIP), (b"\x28\xb5\x2f\xfd", oci.LAYER_TAR_ZSTD)]


class DockerArchive:
    def __init__(self, path: Union[str, os.PathLike[str]]) -> None:
        self.path = Path(path)
        try:
            self.tar = tarfile.open(self.path, "r:")
        except (OSError, tarfile.TarError) as e:
            raise InvalidArgumentError(errno.EINVAL, f"{self.path}: not a docker-save tar archive ({e})") from None
        self._members = {m.name.lstrip("./"): m for m in self.tar.getmembers() if m.isfile()}
        entries = json.loads(self._bytes("manifest.json"))
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
            raise InvalidArgumentError(
                errno.EINVAL, f"{self.path}: manifest.json must list exactly one image (save one image per archive)"
            )
        entry = entries[0]
        self.config = self._bytes(str(entry.get("Config", "")))
        config = oci.parse_document(self.config, "the archive's config")
        diff_ids = config.get("rootfs", {}).get("diff_ids", [])
        layers = entry.get("Layers", [])
        if not isinstance(layers, list) or not isinstance(diff_ids, list) or len(layers) != len(diff_ids):
            raise InvalidArgumentError(errno.EINVAL, f"{self.path}: its layers do not match the config's diff_ids")
        self._layer_names: Dict[str, str] = {}
        descs: List[Dict[str, Any]] = []
        for name, diff_id in zip(layers, diff_ids):
            member = self._member(str(name))
            with open(self.path, "rb") as f:
                f.seek(member.offset_data)
                head = f.read(min(4, member.size))
            media_type = next((t for magic, t in _MAGIC if head.startswith(magic)), oci.LAYER_TAR)
            parts = str(name).split("/")
            digest = f"sha256:{parts[2]}" if len(parts) == 3 and parts[:2] == ["blobs", "sha256"] else str(diff_id)
            oci.checked_descriptor({"digest": digest})
            self._layer_names[digest] = str(name)
            descs.append({"mediaType": media_type, "digest": digest, "size": member.size})
        self.manifest = oci.canonical(
            {
                "schemaVersion": 2,
                "mediaType": oci.MANIFEST,
                "config": oci.descriptor(oci.CONFIG, self.config),
                "layers": descs,
            }
        )

    def __str__(self) -> str:
        return f"docker-archive:{self.path}"

    def _member(self, name: str) -> tarfile.TarInfo:
        member = self._members.get(name.lstrip("./"))
        if member is None:
            raise InvalidArgumentError(errno.EINVAL, f"{self.path}: no member {name!r}")
        return member

    def _open(self, member: tarfile.TarInfo) -> Any:
        f = self.tar.extractfile(member)
        if f is None:
            raise InvalidArgumentError(errno.EINVAL, f"{self.path}: {member.name} is not a file")
        return f

    def _bytes(self, name: str) -> bytes:
        member = self._member(name)
        if member.size > oci.MAX_DOCUMENT:
            raise InvalidArgumentError(errno.EINVAL, f"{self.path}: {name} is {member.size} bytes, too big")
        data: bytes = self._open(member).read()
        return data

    def root(self) -> Tuple[str, bytes]:
        return oci.MANIFEST, self.manifest

    def document_bytes(self, desc: Dict[str, Any]) -> bytes:
        digest, _ = oci.checked_descriptor(desc)
        for data in (self.manifest, self.config):
            if oci.sha256_digest(data) == digest:
                return data
        raise InvalidArgumentError(errno.EINVAL, f"{self.path}: no document {digest}")

    def layer(self, desc: Dict[str, Any], work: Path) -> Tuple[Path, bool]:
        digest, size = oci.checked_descriptor(desc)
        member = self._member(self._layer_names.get(digest, ""))
        dest = work / digest.replace(":", "-")
        h = hashlib.sha256()
        # Its own file handle: layers are copied out in parallel.
        with open(self.path, "rb") as src, open(dest, "wb") as out:
            src.seek(member.offset_data)
            left = member.size
            while left:
                block = src.read(min(left, 1 << 20))
                if not block:
                    raise InvalidArgumentError(errno.EINVAL, f"{self.path}: {member.name} is cut short")
                h.update(block)
                out.write(block)
                left -= len(block)
        if "sha256:" + h.hexdigest() != digest or (size is not None and member.size != size):
            dest.unlink()
            raise DigestMismatchError(errno.EIO, f"{self.path}: layer {member.name} does not match {digest}")
        return dest, True
