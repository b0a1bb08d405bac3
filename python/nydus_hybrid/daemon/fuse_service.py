"""The FUSE service of the daemon: one kernel mount (the Rust server in
``nydus_hybrid.mounts.fuse``) and the RAFS instances attached under it, at ``/`` (dedicated) or
``/<id>`` (shared). It turns API requests into attach/detach calls and answers the metrics
lookups of spec §8. Everything here is control; no file data passes through Python."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from nydus_hybrid import config as nconfig
from nydus_hybrid.daemon.early import CACHE_OPTS, Early, accounting
from nydus_hybrid.daemon.errors import BadRequest, DaemonError, MetricsNotFound
from nydus_hybrid.errors import NydusError
from nydus_hybrid.image import Image
from nydus_hybrid.mounts.fuse import Mount
from nydus_hybrid.mounts.mountinfo import mountpoint_path

if TYPE_CHECKING:  # TypedDicts: annotations only, kept off the daemon's start path
    from nydus_hybrid.types import AccessPattern, FilesMetrics, FsMetrics, Inflight


class Instance:
    """One RAFS instance: where it is, what it was mounted from, and its reader. (A plain
    class: ``dataclasses`` costs the daemon's start several ms of imports.)"""

    def __init__(
        self,
        mountpoint: str,
        source: str,
        config_text: str,
        config: Dict[str, Any],  # normalised v2 form, secrets removed
        image: Image,
        index: int,
        prefetch_files: Optional[List[str]] = None,
    ):
        self.mountpoint = mountpoint
        self.source = source
        self.config_text = config_text
        self.config = config
        self.image = image
        self.index = index
        self.prefetch_files = prefetch_files
        self.mounted_at = time.time()

    @property
    def config_id(self) -> str:
        return self.config.get("id") or ""

    def mounted_time(self) -> str:
        """The `time` crate's human-readable form nydusd reports: `YYYY-MM-DD HH:MM:SS.nnnnnnnnn +00:00:00`."""
        secs = int(self.mounted_at)
        nanos = int((self.mounted_at - secs) * 1e9)
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs)) + f".{nanos:09d} +00:00:00"

    def info(self) -> Dict[str, Any]:
        return {
            "backend_type": "Rafs",
            "mountpoint": self.mountpoint,
            "mounted_time": self.mounted_time(),
            "config": self.config,
        }


def check_virtual_mountpoint(path: Optional[str]) -> str:
    """A pseudo-fs location: absolute, no `..`, no empty or `.` components (but `/` is fine)."""
    if not path:
        raise BadRequest("QueryString(\"'mountpoint' should be specified in query string\")")
    parts = path.split("/")
    if not path.startswith("/") or any(p in (".", "..") for p in parts) or "\0" in path:
        raise BadRequest(f"invalid mountpoint {path!r}: must be absolute, without '.' or '..'")
    return "/" + "/".join(p for p in parts if p)


class FuseService:
    def __init__(self, mountpoint: str, threads: int):
        self.mountpoint = mountpoint_path(mountpoint)
        self.threads = threads
        self.mount: Optional[Mount] = None
        self.instances: Dict[str, Instance] = {}
        self._lock = threading.RLock()

    # --- the kernel mount and its workers -------------------------------------------------

    def mount_fuse(self, dedicated: bool) -> None:
        """``dedicated``: one image at ``/`` for the mount's life, so the kernel may cache
        every listing without asking (zero-message opendir, as nydusd)."""
        self.mount = Mount.create(self.mountpoint, opendir=not dedicated)

    def resume_fuse(self, fuse_fd: int, vfs_state: bytes) -> None:
        """Serve the live mount a predecessor handed over (its fd and Vfs state)."""
        self.mount = Mount.resume(self.mountpoint, fuse_fd, vfs_state)

    def adopt(self, early: Early) -> None:
        """Serve the mount ``daemon.early`` made before the command line was parsed: its
        workers are running and, with a bootstrap, its image is attached at ``/``."""
        fuse = early.take()
        if early.image is None or early.config is None:
            self.mount = Mount.adopt(fuse)
            return
        image = Image(early.image)
        self.mount = Mount.adopt(fuse, ("/", image, early.index))
        source = early.options["bootstrap"]
        self.instances["/"] = Instance("/", source, early.config_text, early.config, image, early.index)
        self._prefetch_default(image, dict(early.config))

    def abandon_fuse(self) -> None:
        """Undo ``resume_fuse`` and any instances restored since, leaving the mount to its owner."""
        if self.mount is not None:
            self.mount.abandon()
        self.mount = None
        self.instances.clear()

    def start_workers(self) -> None:
        self.need_mount().start(self.threads)

    def stop_workers(self) -> None:
        self.need_mount().stop(umount=False)

    def umount(self) -> None:
        if self.mount is not None:
            self.mount.stop(umount=True)

    def need_mount(self) -> Mount:
        if self.mount is None:
            raise DaemonError("the FUSE session is not set up (waiting for a takeover?)")
        return self.mount

    # --- instances ------------------------------------------------------------------------

    def _open(
        self,
        source: str,
        config_text: str,
        prefetch_files: Optional[List[str]] = None,
        mountpoint: Optional[str] = None,
    ) -> Tuple[Dict[str, Any], Image]:
        if not os.path.isfile(source):
            raise DaemonError(f'Mount(MountFilesystem(Other("bootstrap {source} does not exist")))')
        try:
            cfg = nconfig.parse(config_text)
            image = Image.open(source, config=config_text, backend_id=mountpoint)
            image.stat("/")  # the bootstrap is read and validated now, not on first use
        except NydusError as e:
            raise DaemonError(f"Mount(MountFilesystem(Other({str(e)!r})))") from e
        if prefetch_files:
            self._prefetch(image, cfg, prefetch_files)
        else:
            self._prefetch_default(image, cfg)
        return cfg, image

    @staticmethod
    def _prefetch_policy(cfg: Dict[str, Any]) -> Dict[str, Any]:
        p: Dict[str, Any] = cfg["rafs"]["prefetch"] if cfg["rafs"]["prefetch"]["enable"] else cfg["cache"]["prefetch"]
        return p

    def _prefetch_default(self, image: Image, cfg: Dict[str, Any]) -> None:
        """Without a list, nydusd prefetches the image's own table, or with `prefetch_all`
        and no table, every blob; only when prefetch is enabled and there is a cache."""
        p = self._prefetch_policy(cfg)
        if not p["enable"] or cfg["cache"]["type"] not in ("blobcache", "filecache"):
            return
        table = image.prefetch_entries > 0
        if table or p["prefetch_all"]:
            image.prefetch(
                None,
                all=not table,
                threads=max(1, p["threads"]),
                batch_size=p["batch_size"],
                bandwidth_limit=p["bandwidth_limit"],
            )

    def _prefetch(self, image: Image, cfg: Dict[str, Any], files: List[str]) -> None:
        bad = [f for f in files if not isinstance(f, str) or not f.startswith("/")]
        if bad:
            raise BadRequest(f"prefetch_files must be absolute paths: {bad[:3]}")
        if cfg["cache"]["type"] not in ("blobcache", "filecache"):
            return  # nothing to fill without a cache; nydusd also ignores it then
        existing = [f for f in files if _exists(image, f)]
        if existing:
            p = self._prefetch_policy(cfg)
            image.prefetch(
                existing, threads=max(1, p["threads"]), batch_size=p["batch_size"], bandwidth_limit=p["bandwidth_limit"]
            )

    def add(
        self, mountpoint: str, source: str, config_text: str, prefetch_files: Optional[List[str]] = None
    ) -> Instance:
        mountpoint = check_virtual_mountpoint(mountpoint)
        with self._lock:
            old = self.instances.get(mountpoint)
            nested = [p for p in self.instances if p != mountpoint and _nested(p, mountpoint)]
            if nested:
                # An instance inside another would be dropped with it by the Vfs, and its
                # record would outlive it: refused.
                raise BadRequest(f'Mount(InvalidArguments("{mountpoint} would nest with instance {nested[0]}"))')
            if old is not None:
                # The snapshotter re-issues every mount after an upgrade (spec §4.6 B.6, quirk
                # 10.2): the same instance again is a no-op; anything else is refused.
                if old.source == source and old.config_text == config_text:
                    return old
                raise DaemonError('Mount(MountFilesystem(Other("object or filesystem already exists")))')
            cfg, image = self._open(source, config_text, prefetch_files, mountpoint)
            index = self._attach(mountpoint, image, cfg)
            inst = Instance(mountpoint, source, config_text, cfg, image, index, prefetch_files)
            self.instances[mountpoint] = inst
            return inst

    def _attach(self, mountpoint: str, image: Image, cfg: Dict[str, Any], index: Optional[int] = None) -> int:
        return self.need_mount().attach(mountpoint, image, index=index, accounting=accounting(cfg), **CACHE_OPTS)

    def restore(
        self,
        mountpoint: str,
        source: str,
        config_text: str,
        index: int,
        prefetch_files: Optional[List[str]] = None,
    ) -> Instance:
        """Put an instance back at the index it had in a previous daemon (takeover)."""
        mountpoint = check_virtual_mountpoint(mountpoint)
        cfg, image = self._open(source, config_text, prefetch_files, mountpoint)
        self._attach(mountpoint, image, cfg, index)
        inst = Instance(mountpoint, source, config_text, cfg, image, index, prefetch_files)
        self.instances[mountpoint] = inst
        return inst

    def remove(self, mountpoint: str) -> None:
        mountpoint = check_virtual_mountpoint(mountpoint)
        with self._lock:
            if mountpoint not in self.instances:
                raise DaemonError('Mount(MountFilesystem(Other("object or filesystem doesn\'t exist")))')
            self.need_mount().detach(mountpoint)
            self.instances.pop(mountpoint).image.cancel_prefetch()

    def remount(self, mountpoint: str, source: str, config_text: str) -> Instance:
        """Reload an instance's bootstrap and config in place (same path, new reader)."""
        mountpoint = check_virtual_mountpoint(mountpoint)
        with self._lock:
            if mountpoint not in self.instances:
                raise DaemonError('Mount(MountFilesystem(Other("object or filesystem doesn\'t exist")))')
            cfg, image = self._open(source, config_text, mountpoint=mountpoint)
            self.need_mount().detach(mountpoint)
            self.instances[mountpoint].image.cancel_prefetch()
            index = self._attach(mountpoint, image, cfg)
            inst = Instance(mountpoint, source, config_text, cfg, image, index)
            self.instances[mountpoint] = inst
            return inst

    # --- metrics (spec §8) ----------------------------------------------------------------

    def _pick(self, id_: Optional[str], key: Callable[[Instance], str]) -> Instance:
        with self._lock:
            if id_ is None:
                if len(self.instances) == 1:
                    return next(iter(self.instances.values()))
                raise MetricsNotFound(f"no metrics: {len(self.instances)} instances and no id")
            for inst in self.instances.values():
                if key(inst) == id_:
                    return inst
        raise MetricsNotFound(f"no metrics for id {id_!r}")

    def fs_metrics(self, id_: Optional[str]) -> FsMetrics:
        return self.need_mount().fs_metrics(self._pick(id_, lambda i: i.mountpoint).mountpoint)

    def files_metrics(self, id_: Optional[str], latest: bool) -> FilesMetrics:
        return self.need_mount().files_metrics(self._pick(id_, lambda i: i.mountpoint).mountpoint, latest)

    def access_pattern(self, id_: Optional[str]) -> AccessPattern:
        return self.need_mount().access_pattern(self._pick(id_, lambda i: i.mountpoint).mountpoint)

    def backend_metrics(self, id_: Optional[str]) -> Dict[str, Any]:
        backend: Dict[str, Any] = self._pick(id_, lambda i: i.mountpoint).image.metrics()["backend"]
        return backend

    def blobcache_metrics(self, id_: Optional[str]) -> Dict[str, Any]:
        # Keyed by the config id (the snapshotter's v1 `device.id`, `/<snapshotID>`).
        blobcache: Dict[str, Any] = self._pick(id_, lambda i: i.config_id).image.metrics()["blobcache"]
        return blobcache

    def inflight(self) -> Inflight:
        """Every operation being served now, over all instances (spec §8.8)."""
        with self._lock:
            paths = list(self.instances)
        if self.mount is None:
            return []
        return [op for p in paths for op in self.mount.inflight(p)]

    def backend_collection(self) -> Dict[str, Any]:
        with self._lock:
            return {mp: inst.info() for mp, inst in self.instances.items()}

    def saved_mounts(self) -> List[Dict[str, Any]]:
        """What a successor needs to rebuild every instance (for the upgrade state)."""
        with self._lock:
            return [
                {
                    "mountpoint": i.mountpoint,
                    "source": i.source,
                    "config": i.config_text,
                    "index": i.index,
                    "prefetch_files": i.prefetch_files,
                }
                for i in self.instances.values()
            ]

    def saved_caches(self) -> List[Dict[str, Any]]:
        """Where each instance's blob cache lives (it persists on disk; the successor reopens
        it through the same config), for the handover state."""
        with self._lock:
            out: List[Dict[str, Any]] = []
            for i in self.instances.values():
                bc = i.image.metrics()["blobcache"]
                out.append({"mountpoint": i.mountpoint, "work_dir": bc["store_path"], "files": bc["underlying_files"]})
            return out


def _nested(a: str, b: str) -> bool:
    """Whether one pseudo-fs path is inside the other (``/`` holds everything)."""
    return a == "/" or b == "/" or a.startswith(b + "/") or b.startswith(a + "/")


def _exists(image: Image, path: str) -> bool:
    try:
        image.lookup(path)
        return True
    except NydusError:
        return False


def config_from_localfs_dir(blob_dir: str) -> str:
    """nydusd's `--localfs-dir`: a localfs backend plus a blob cache beside it."""
    return json.dumps(
        {
            "version": 2,
            "backend": {"type": "localfs", "localfs": {"dir": blob_dir}},
            "cache": {"type": "blobcache", "filecache": {"work_dir": os.path.join(blob_dir, "cache")}},
        }
    )
