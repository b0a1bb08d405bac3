"""The shapes of what the Rust core returns, in one place. ``_core.pyi`` names these types,
and ``tests/unit/test_core_types.py`` checks real return values against them key by key.

The counters that mirror nydusd's own documents (FUSE, backend, blob cache and fscache
metrics) are plain ``Dict[str, Any]`` here: their contract is the daemon's
``openapi.yaml``, which the API tests validate every answer against."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, TypedDict


class StatDict(TypedDict):
    st_ino: int
    st_mode: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime: int
    st_mtime_nsec: int
    rdev_major: int
    rdev_minor: int
    st_blocks: int


class BuildReportDict(TypedDict):
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
    inline_bootstrap: bool
    dict_chunks: int


class MergeReportDict(TypedDict):
    layers: int
    blobs: List[str]
    inodes: int
    files: int
    chunks: int
    bootstrap_size: int


class SuperblockInfo(TypedDict):
    block_size: int
    root_nid: int
    inodes: int
    blocks: int
    meta_blkaddr: int
    extra_devices: int
    flags: str
    chunk_size: int
    compressor: str
    digester: str
    blob_table: List[int]
    chunk_table: List[int]
    prefetch_table: List[int]


class BlobInfo(TypedDict):
    blob_id: str
    blob_index: int
    chunk_size: int
    chunk_count: int
    compressor: Optional[str]
    digester: Optional[str]
    features: str
    compressed_size: int
    uncompressed_size: int
    ci_compressor: Optional[str]
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    toc_size: int
    toc_digest: str
    device_blocks: int
    mapped_blkaddr: int


class Counts(TypedDict):
    directories: int
    regular_files: int
    symlinks: int
    special_files: int
    file_bytes: int
    chunk_table_entries: int


class InspectReport(TypedDict):
    format: str
    bootstrap_size: int
    superblock: SuperblockInfo
    blobs: List[BlobInfo]
    counts: Counts


class CheckReport(TypedDict):
    inodes: int
    directories: int
    regular_files: int
    symlinks: int
    special_files: int
    chunk_refs: int
    blobs_checked: int
    chunks_verified: int
    bytes_verified: int


class UnpackReport(TypedDict):
    entries: int
    bytes: int
    skipped_sockets: int


class CacheOpts(TypedDict):
    """How the kernel may cache a RAFS instance's entries, attributes and pages."""

    entry_timeout: float
    attr_timeout: float
    keep_cache: bool


class GcReport(TypedDict):
    removed: List[str]
    freed_bytes: int
    in_use: List[str]
    kept_bytes: int


# nydusd-shaped documents (contract: daemon/openapi.yaml).
ImageMetrics = Dict[str, Any]  # {"backend": BackendMetrics §8.4, "blobcache": BlobcacheMetrics §8.5}
FsMetrics = Dict[str, Any]  # FsIoStats §8.1
FilesMetrics = Any  # §8.2: a list of per-file counters, or [first, last] / [ino] ranges
AccessPattern = List[Dict[str, Any]]  # §8.3
Inflight = List[Dict[str, Any]]  # §8.8
FscacheMetrics = Dict[str, Any]  # our fscache server's counters
NormalizedConfig = Dict[str, Any]  # a v2 nydusd config with secrets removed (spec §7)
BlobEntry = Dict[str, Any]  # a BlobCacheEntry (spec §5.7)
EntryList = List[Tuple[str, BlobEntry]]
