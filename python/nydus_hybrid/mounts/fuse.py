"""FUSE mounts served by the Rust core: worker threads read ``/dev/fuse`` and answer from
the RAFS reader without entering Python. This module only sets mounts up and tears them
down. (``nydus_hybrid.mounts.fuse_shim`` is the slower, scriptable fusepy-style path.)"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union, cast

from nydus_hybrid import _core
from nydus_hybrid.image import Image, PathArg

if TYPE_CHECKING:  # TypedDicts: annotations only, kept off the daemon's start path
    from nydus_hybrid.types import AccessPattern, FilesMetrics, FsMetrics, Inflight


class Mount:
    """One FUSE mount. Images attach at ``/`` (dedicated mode, one image) or at ``/<id>``
    (shared mode, many, added and removed at runtime)."""

    def __init__(self, inner: _core.FuseMount):
        self._inner = inner
        self._images: Dict[str, Image] = {}
        self._indexes: Dict[str, int] = {}

    @classmethod
    def create(cls, mountpoint: PathArg, *, fsname: str = "rafs", open: bool = False, opendir: bool = True) -> Mount:
        """Mount an empty read-only filesystem (root may mount without fusermount). A dead
        FUSE mount left at the path (ENOTCONN) is detached first.

        Which opens reach the daemon: with ``open`` False the kernel sends no OPEN and keeps
        each file's page cache (an image attached with ``keep_cache=False`` needs True).
        With ``opendir`` False it sends no OPENDIR and caches every listing, which only a
        mount serving one image at ``/`` allows: a shared mount's root changes."""
        return cls(_core.FuseMount.mount(os.fspath(mountpoint), fsname, open, opendir))

    @classmethod
    def resume(cls, mountpoint: PathArg, fuse_fd: int, state: bytes) -> Mount:
        """Serve a live mount whose ``/dev/fuse`` fd was handed over by a previous server
        (``state`` is that server's ``save_state()``); nothing is remounted."""
        return cls(_core.FuseMount.resume(os.fspath(mountpoint), fuse_fd, state))

    @classmethod
    def adopt(cls, inner: _core.FuseMount, attached: Optional[Tuple[str, Image, int]] = None) -> Mount:
        """Own a mount made through the core directly (``daemon.early``); ``attached`` is the
        image it already serves, as (path, image, index)."""
        m = cls(inner)
        if attached is not None:
            path, image, index = attached
            m._images[path] = image
            m._indexes[path] = index
        return m

    @property
    def mountpoint(self) -> str:
        return os.fspath(self._inner.mountpoint)

    def attach(
        self,
        path: str,
        image: Image,
        *,
        entry_timeout: float = 60.0,
        attr_timeout: float = 60.0,
        keep_cache: bool = True,
        index: Optional[int] = None,
        accounting: Tuple[bool, bool, bool] = (False, False, False),
    ) -> int:
        """Serve ``image`` at ``path``; returns its index (it fixes the inode numbers the
        kernel sees; pass it back as ``index`` to restore an image after a handover).
        ``accounting`` switches on nydusd's (iostats_files, access_pattern, latest_read_files)."""
        flags = cast(Tuple[bool, bool, bool], tuple(bool(a) for a in accounting))
        args = (entry_timeout, attr_timeout, keep_cache, flags)
        if index is None:
            index = self._inner.attach(path, image.handle, *args)
        else:
            self._inner.reattach(path, index, image.handle, *args)
        self._images[path] = image
        self._indexes[path] = index
        return index

    def detach(self, path: str) -> None:
        self._inner.detach(path)
        self._images.pop(path, None)
        self._indexes.pop(path, None)

    def image(self, path: str) -> Optional[Image]:
        return self._images.get(path)

    def fs_metrics(self, path: str) -> FsMetrics:
        """FUSE operation counters of the image at ``path``, in the shape of nydusd's
        ``/api/v1/metrics`` (FsIoStats): per-op hits, errors and latency, bytes read."""
        return self._inner.fs_metrics(path)

    def files_metrics(self, path: str, latest: bool = False) -> FilesMetrics:
        """nydusd's ``/metrics/files``: counters by inode of the files opened (needs
        ``iostats_files``); with ``latest``, the inodes read since the last such call, as
        ``[first, last]`` or ``[ino]`` ranges (needs ``latest_read_files``)."""
        return self._inner.files_metrics(path, latest)

    def access_pattern(self, path: str) -> AccessPattern:
        """nydusd's ``/metrics/pattern``: each file read, with its read count and first
        access time (needs ``access_pattern``)."""
        return self._inner.access_pattern(path)

    def inflight(self, path: str) -> Inflight:
        """Operations the image at ``path`` is serving right now (nydusd's ``/metrics/inflight``)."""
        return self._inner.inflight(path)

    def start(self, threads: int = 4) -> None:
        self._inner.start(threads)

    def stop(self, *, umount: bool = True) -> None:
        """Stop serving; with ``umount`` (SIGTERM), unmount too. Without it, the mount stays
        and requests wait for a successor (hot upgrade)."""
        self._inner.stop(umount)

    def fuse_fd(self) -> Optional[int]:
        return self._inner.fuse_fd()

    def abandon(self) -> None:
        """Let go of a resumed session without unmounting: the mount stays with whoever
        serves it (a takeover that failed half-way)."""
        self._inner.abandon()

    @property
    def initialized(self) -> bool:
        """The kernel's FUSE INIT has been answered (a handover state exists only after it)."""
        return self._inner.initialized

    def save_state(self) -> bytes:
        return bytes(self._inner.save_state())


def mount_image(
    mountpoint: PathArg,
    bootstrap: PathArg,
    blob_dir: Optional[PathArg] = None,
    *,
    config: Union[str, Dict[str, Any], None] = None,
    threads: int = 4,
    entry_timeout: float = 60.0,
    attr_timeout: float = 60.0,
    keep_cache: bool = True,
) -> Mount:
    """Dedicated mode in one call: open an image and serve it at ``mountpoint``."""
    image = Image.open(bootstrap, blob_dir, config=config)
    m = Mount.create(mountpoint, open=not keep_cache, opendir=not keep_cache)
    try:
        m.attach("/", image, entry_timeout=entry_timeout, attr_timeout=attr_timeout, keep_cache=keep_cache)
        m.start(threads)
    except BaseException:
        m.stop(umount=True)
        raise
    return m
