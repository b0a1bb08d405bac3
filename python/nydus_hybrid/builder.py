"""Build a RAFS v6 image (bootstrap + data blob) from a directory or an OCI layer tarball.

Its own module, apart from ``nydus_hybrid.image``, so that reading an image (the daemon's
start path) does not load what building needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

from nydus_hybrid import _core
from nydus_hybrid.image import PathArg


@dataclass(frozen=True)
class BuildReport:
    blob_id: Optional[str]
    blob_path: Optional[str]
    blob_size: int
    bootstrap_size: int
    inodes: int
    files: int
    bytes_in: int
    chunks: int
    deduped_chunks: int
    unique_bytes: int
    uncompressed_size: int
    inline_bootstrap: bool = False  # the bootstrap is inside the blob (`image.boot`)
    dict_chunks: int = 0  # distinct chunks referenced in the chunk dictionary, not stored

    @property
    def dedup_ratio(self) -> float:
        """Input bytes per byte of distinct chunks (1.0 means nothing was deduplicated)."""
        return self.bytes_in / self.unique_bytes if self.unique_bytes else 1.0


def build(
    source: PathArg,
    bootstrap: Optional[PathArg],
    blob_dir: PathArg,
    *,
    chunk_size: int = 0x100000,
    compressor: str = "zstd",
    digester: str = "blake3",
    explicit_uid_gid: bool = True,
    whiteout_spec: str = "oci",
    progress: bool = True,
    exclude: Sequence[Union[str, bytes]] = (),
    inline_bootstrap: bool = False,
    prefetch: Sequence[Union[str, bytes]] = (),
    parent_bootstrap: Optional[PathArg] = None,
    chunk_dict: Optional[PathArg] = None,
) -> BuildReport:
    """Build a RAFS v6 bootstrap and data blob from a directory or OCI layer tarball.

    With ``inline_bootstrap`` (``bootstrap`` None), the bootstrap goes into the blob, as
    nydus-snapshotter's converter packs a layer. ``prefetch``: image paths (``/usr/bin``)
    for the prefetch table, as ``--prefetch-policy fs`` reads them from stdin. With
    ``parent_bootstrap``, the source is a layer over that image: its OCI whiteouts apply to
    the parent's tree, and ``bootstrap`` is the whole image's (parent blobs, then the new one).
    ``chunk_dict``: an image bootstrap whose chunks are referenced where they are stored
    instead of being stored again (its blobs follow the new one in the blob table)."""
    report = _core.build(
        os.fspath(source),
        None if bootstrap is None else os.fspath(bootstrap),
        os.fspath(blob_dir),
        chunk_size=chunk_size,
        compressor=compressor,
        digester=digester,
        explicit_uid_gid=explicit_uid_gid,
        whiteout_spec=whiteout_spec,
        progress=progress,
        exclude=[os.fsencode(e) for e in exclude],
        inline_bootstrap=inline_bootstrap,
        prefetch=[os.fsencode(p) for p in prefetch],
        parent=None if parent_bootstrap is None else os.fspath(parent_bootstrap),
        chunk_dict=None if chunk_dict is None else os.fspath(chunk_dict),
    )
    return BuildReport(**report)


@dataclass(frozen=True)
class MergeReport:
    layers: int
    blobs: List[str]  # blob ids in blob-table order
    inodes: int
    files: int
    chunks: int
    bootstrap_size: int


def merge(
    sources: Sequence[PathArg],
    bootstrap: PathArg,
    *,
    blob_digests: Optional[Sequence[str]] = None,
    blob_sizes: Optional[Sequence[int]] = None,
    prefetch: Sequence[Union[str, bytes]] = (),
) -> MergeReport:
    """Merge layer bootstraps, lowest first, into one image bootstrap, as ``nydus-image
    merge`` does: OCI whiteouts and opaque directories applied, the blob table in layer
    order. A source is a bootstrap file or a layer blob carrying one (``image.boot``);
    ``blob_digests`` name the blobs the bootstraps came from (default: a 64-hex file name,
    or a blob's own sha256)."""
    report = _core.merge(
        [os.fspath(s) for s in sources],
        os.fspath(bootstrap),
        blob_digests=None if blob_digests is None else list(blob_digests),
        blob_sizes=None if blob_sizes is None else list(blob_sizes),
        prefetch=[os.fsencode(p) for p in prefetch],
    )
    return MergeReport(**report)
