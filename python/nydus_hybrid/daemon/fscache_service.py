"""The fscache service of a ``singleton`` daemon (spec §5): the cachefiles device, bound fresh
or restored after a takeover, and the blob cache entries of ``/api/v2/blobs``. Entries are
checked here (§5.7) and registered with the Rust server, which answers every kernel
request; no file data passes through Python.

The device is ``/dev/cachefiles``, or the simulator when ``NYDUS_HYBRID_CACHEFILES`` is
``sim:<socket>`` (this kernel has no cachefiles on-demand; docs/fscache-simulator.md)."""

from __future__ import annotations

import os
import stat
import threading
from typing import Any, Dict, List, NoReturn, Optional, cast

from nydus_hybrid import config as nconfig
from nydus_hybrid.daemon.errors import BadRequest, DaemonError, MetricsNotFound, Unsupported
from nydus_hybrid.errors import NotFoundError, NydusError
from nydus_hybrid.image import Image
from nydus_hybrid.mounts import fscache
from nydus_hybrid.mounts.fscache import FscacheServer

LEGACY_REQUIRED = ("backend_type", "backend_config", "cache_type", "cache_config")
PREFETCH_REQUIRED = ("enable", "threads_count", "merging_size", "bandwidth_rate")


def _field(doc: Dict[str, Any], name: str, kind: type, what: str = "BlobCacheEntry") -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadRequest(f'ParseBody(Error("{what}: field `{name}` is missing or has the wrong type"))')
    return value


def legacy_to_v2(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The snapshotter's legacy ``config`` (spec §7.4) in the v2 form nydusd converts it to."""
    for name in LEGACY_REQUIRED:
        if name not in cfg:
            raise BadRequest(f'ParseBody(Error("config: missing field `{name}`"))')
    backend_type, cache_type = _field(cfg, "backend_type", str, "config"), _field(cfg, "cache_type", str, "config")
    cache: Dict[str, Any] = {"type": cache_type, cache_type: _field(cfg, "cache_config", dict, "config")}
    prefetch = cfg.get("prefetch_config")
    if prefetch is not None:
        if not isinstance(prefetch, dict) or any(k not in prefetch for k in PREFETCH_REQUIRED):
            raise BadRequest(
                'ParseBody(Error("config.prefetch_config: enable, threads_count, merging_size and '
                'bandwidth_rate are all required"))'
            )
        cache["prefetch"] = {
            "enable": bool(prefetch["enable"]),
            "threads": prefetch["threads_count"],
            "batch_size": prefetch["merging_size"],
            "bandwidth_limit": prefetch["bandwidth_rate"],
            "prefetch_all": True,
        }
    return {
        "version": 2,
        "id": cfg.get("id", ""),
        "metadata_path": cfg.get("metadata_path", ""),
        "backend": {"type": backend_type, backend_type: _field(cfg, "backend_config", dict, "config")},
        "cache": cache,
    }


def check_entry(entry: Dict[str, Any]) -> Dict[str, Any]:
    """Validate a BlobCacheEntry (spec §5.7 steps 1-3); returns it with ``config_v2`` filled."""
    kind = _field(entry, "type", str)
    id_ = _field(entry, "id", str)
    domain = entry.get("domain_id", "") or ""
    if not isinstance(domain, str):
        raise BadRequest('ParseBody(Error("BlobCacheEntry: field `domain_id` must be a string"))')
    if "config_v2" in entry:
        v2 = _field(entry, "config_v2", dict)
        if v2.get("version") != 2:
            raise BadRequest('ParseBody(Error("config_v2: `version` must be 2"))')
    elif "config" in entry:
        v2 = legacy_to_v2(_field(entry, "config", dict))
    else:
        raise BadRequest('ParseBody(Error("BlobCacheEntry: one of `config_v2` or `config` is required"))')
    for section in ("backend", "cache"):
        if not isinstance(v2.get(section), dict):
            raise BadRequest(f'ParseBody(Error("config_v2: invalid `{section}` section"))')
    if kind != "bootstrap":
        raise DaemonError("Invalid argument (os error 22): only `bootstrap` entries can be added")
    if not id_ or "/" in id_ or "/" in domain:
        raise DaemonError("Invalid argument (os error 22): `id` and `domain_id` must be non-empty names without '/'")
    meta = v2.get("metadata_path") or ""
    if not isinstance(meta, str) or not meta or not _is_regular(meta):
        raise DaemonError(f"Invalid argument (os error 22): metadata_path {meta!r} is not a regular file")
    cache = v2["cache"]
    ctype = cache.get("type")
    if ctype not in ("fscache", "filecache"):
        raise DaemonError(f"Invalid argument (os error 22): cache type {ctype!r}; fscache or filecache is required")
    sub = cache.get(ctype) or {}
    work_dir = sub.get("work_dir", ".") if isinstance(sub, dict) else None
    if not isinstance(work_dir, str) or not os.path.isdir(work_dir):
        raise DaemonError(f"Invalid argument (os error 22): cache work_dir {work_dir!r} does not exist")
    return dict(entry, domain_id=domain, config_v2=dict(v2, metadata_path=meta))


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


class FscacheService:
    def __init__(self, fscache_dir: Optional[str], threads: int, tag: Optional[str] = None):
        self.dir = os.path.abspath(fscache_dir) if fscache_dir else None
        self.threads, self.tag = threads, tag
        self.device = fscache.cachefiles_device()
        self.server: Optional[FscacheServer] = None
        self.lock = threading.Lock()  # culls chdir: the cwd is process-wide

    # --- device ---------------------------------------------------------------------------

    def bind(self) -> None:
        if self.dir is None:
            return  # without --fscache only the blob API's bookkeeping is available
        if not os.path.isdir(self.dir):
            raise DaemonError(f"the fscache dir {self.dir} does not exist")
        self.server = FscacheServer.bind(self.device, self.dir, self.tag)

    def restore(self, fd: int, entries: List[Dict[str, Any]]) -> None:
        """Takeover: adopt the predecessor's device fd (``restore``), re-add its entries."""
        server = FscacheServer.restore(self.device, fd)
        for entry in entries:
            self._register(server, entry)
        self.server = server

    def _need(self) -> FscacheServer:
        if self.server is None:
            raise Unsupported('Unsupported("the daemon was started without --fscache")')
        return self.server

    def device_fd(self) -> Optional[int]:
        return None if self.server is None else self.server.device_fd()

    def start_workers(self) -> None:
        if self.server is not None:
            self.server.start(self.threads)

    def stop_workers(self) -> None:
        if self.server is not None:
            self.server.stop()

    # --- blob entries ---------------------------------------------------------------------

    def add_entry(self, doc: Dict[str, Any]) -> List[str]:
        entry = check_entry(doc)
        return self._register(self._need(), entry)

    @staticmethod
    def _register(server: FscacheServer, entry: Dict[str, Any]) -> List[str]:
        v2 = entry["config_v2"]
        meta = v2["metadata_path"]
        # The kernel's cache file is the cache: the reader gets the backend only.
        reader_cfg = {"version": 2, "id": v2.get("id", ""), "backend": v2["backend"]}
        try:
            nconfig.parse(reader_cfg)
            image = Image.open(meta, config=reader_cfg)  # only RAFS v6 opens
            prefetch = v2["cache"].get("prefetch") or {}
            enabled = bool(prefetch.get("enable")) if isinstance(prefetch, dict) else False
            return server.add_bootstrap(entry["domain_id"], entry["id"], meta, image, enabled, entry)
        except NydusError as e:
            raise DaemonError(f"blob_cache: {e}") from e

    def remove_entry(self, domain: str, blob_id: str) -> None:
        try:
            self._need().remove(domain, blob_id)
        except NotFoundError as e:
            raise DaemonError(f"No such file or directory (os error 2): {e}") from e

    def remove_domain(self, domain: str) -> None:
        self._need().remove_domain(domain)

    def entries(self, domain: str, blob_id: str = "") -> List[Dict[str, Any]]:
        # An empty domain lists everything (nydusd has no listing; this is ours).
        prefix = f"{domain}/{blob_id}" if blob_id else (f"{domain}/" if domain else "")
        return [entry for key, entry in self._need().entries(prefix) if not blob_id or key == prefix]

    def saved_entries(self) -> List[Dict[str, Any]]:
        return [entry for _, entry in self._need().entries("")] if self.server is not None else []

    def cull(self, blob_id: str) -> None:
        """DELETE ?blob_id=: cull the kernel's cache files of that cookie in every EROFS
        volume (spec §5.8). An object in use is refused by the kernel and reported."""
        server = self._need()
        if "/" in blob_id or not blob_id:
            raise BadRequest("blob_id must be one path component")
        refused: List[str] = []
        with self.lock:
            # A bound server implies a dir, except after a takeover by a daemon started
            # without --fscache: cache_files(None) then raises TypeError (a 500), as before.
            for path in fscache.cache_files(cast(str, self.dir), blob_id):
                if not self._cull_one(server, path):
                    refused.append(path)
        if refused:
            raise DaemonError(f"Device or resource busy (os error 16): {blob_id} is in use")

    @staticmethod
    def _cull_one(server: FscacheServer, path: str) -> bool:
        """``inuse`` then ``cull``, by name from the file's directory, as the kernel wants."""
        name = os.path.basename(path)
        cwd = os.getcwd()
        try:
            os.chdir(os.path.dirname(path))
            try:
                server.command(f"inuse {name}")
            except NydusError as e:
                if getattr(e, "errno", None) == 16:  # EBUSY: in use
                    return False
                raise
            server.command(f"cull {name}")
            return True
        finally:
            os.chdir(cwd)

    # --- the FUSE side of the API: not here ----------------------------------------------

    def _fuse_only(self) -> NoReturn:
        raise Unsupported('Unsupported("a singleton daemon serves fscache, not FUSE instances")')

    def add(
        self, mountpoint: str, source: str, config_text: str, prefetch_files: Optional[List[str]] = None
    ) -> NoReturn:
        self._fuse_only()

    def remount(self, mountpoint: str, source: str, config_text: str) -> NoReturn:
        self._fuse_only()

    def remove(self, mountpoint: str) -> NoReturn:
        self._fuse_only()

    def fs_metrics(self, id_: Optional[str]) -> NoReturn:
        self._fuse_only()

    def files_metrics(self, id_: Optional[str], latest: bool) -> NoReturn:
        self._fuse_only()

    def access_pattern(self, id_: Optional[str]) -> NoReturn:
        self._fuse_only()

    def backend_metrics(self, id_: Optional[str]) -> NoReturn:
        self._fuse_only()

    def inflight(self) -> NoReturn:
        self._fuse_only()

    def backend_collection(self) -> None:
        return None

    def blobcache_metrics(self, id_: Optional[str]) -> Dict[str, Any]:
        """nydusd's blob cache shape (the kernel owns the cache files, so most counters are
        0) with our request counters under ``fscache``. With an id, only when that bootstrap
        is registered (the snapshotter asks ``/<fscacheID>``, which nydusd never matches)."""
        doc = self.metrics()
        keys = [key for key, _ in self._need().entries("")]
        if id_ and not any(key == id_ or key.endswith("/" + id_) for key in keys):
            raise MetricsNotFound(f"no fscache entry {id_}")
        zero = (
            "partial_hits",
            "whole_hits",
            "prefetch_data_amount",
            "prefetch_requests_count",
            "prefetch_unmerged_chunks",
            "prefetch_cumulative_time_millis",
            "prefetch_workers",
            "prefetch_begin_time_secs",
            "prefetch_begin_time_millis",
            "prefetch_end_time_secs",
            "prefetch_end_time_millis",
            "buffered_backend_size",
        )
        out: Dict[str, Any] = {k: 0 for k in zero}
        out.update(
            underlying_files=sorted(doc["data_blobs"]),
            store_path=self.dir or "",
            total=doc["reads"],
            entries_count=len(keys),
            data_all_ready=doc["data_all_ready"],
            fscache=doc,
        )
        return out

    # --- metrics --------------------------------------------------------------------------

    def metrics(self) -> Dict[str, Any]:
        if self.server is None:
            raise MetricsNotFound("no fscache device is bound")
        doc = self.server.metrics()
        doc["data_blobs"] = self.server.data_refs()
        return doc
