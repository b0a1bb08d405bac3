"""Pythonic access to RAFS v6 images on top of ``_core.Image``.

Paths may be ``str`` or ``bytes``; names come back as ``str`` decoded like ``os.fsdecode``.
All chunk work (fetch, decompress, verify) happens in Rust with the GIL released.
"""

from __future__ import annotations

import errno
import json
import os
import stat as stat_mod
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from nydus_hybrid import _core
from nydus_hybrid.errors import CorruptImageError, InvalidArgumentError

if TYPE_CHECKING:  # TypedDicts: annotations only, kept off the daemon's start path
    from nydus_hybrid.types import CheckReport, ImageMetrics, InspectReport, UnpackReport

PathArg = Union[str, bytes, "os.PathLike[str]"]

# Dirent file type of a directory (RAFS v6 / EROFS).
_DIRENT_DIR = 2


def _image_path(path: Union[str, bytes]) -> bytes:
    return os.fsencode(path)


class StatResult(NamedTuple):
    """An entry's attributes, tuple-like as ``os.stat_result`` is."""

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

    @property
    def st_rdev(self) -> int:
        return os.makedev(self.rdev_major, self.rdev_minor)

    @property
    def st_mtime_ns(self) -> int:
        return self.st_mtime * 1_000_000_000 + self.st_mtime_nsec

    def is_dir(self) -> bool:
        return stat_mod.S_ISDIR(self.st_mode)

    def is_file(self) -> bool:
        return stat_mod.S_ISREG(self.st_mode)

    def is_symlink(self) -> bool:
        return stat_mod.S_ISLNK(self.st_mode)


class Image:
    """An opened image: a bootstrap plus the blobs it names."""

    def __init__(self, inner: _core.Image):
        self._inner = inner
        # Running prefetch jobs: a job dropped is a job cancelled, so the image keeps its
        # jobs alive for as long as it is open, even when the caller lets go of them.
        self._jobs: List[_core.PrefetchJob] = []

    @property
    def handle(self) -> _core.Image:
        """The ``_core.Image`` this wraps: what the core's other bindings (FUSE mounts, the
        fscache server) take."""
        return self._inner

    @classmethod
    def open(
        cls,
        bootstrap: PathArg,
        blob_dir: Optional[PathArg] = None,
        *,
        verify: bool = True,
        cache_dir: Optional[PathArg] = None,
        config: Union[str, Dict[str, Any], None] = None,
        backend_id: Optional[str] = None,
    ) -> Image:
        """Open a bootstrap whose blobs are in ``blob_dir``, or wherever a nydusd ``config``
        (v1 or v2; a dict or JSON/TOML text) says: localfs, registry, S3 or http-proxy, with
        its blob cache. With a cache (``cache_dir`` or the config's ``work_dir``), decoded
        chunks persist (uncompressed, at their blob offsets) and later reads, in this process
        or another, hit it. ``backend_id`` names the backend for runtime credential updates
        (``nydus_hybrid._core.set_registry_auth``); the daemon passes the RAFS mountpoint."""
        if isinstance(config, dict):
            config = json.dumps(config)
        return cls(
            _core.Image.open(
                os.fspath(bootstrap),
                None if blob_dir is None else os.fspath(blob_dir),
                verify,
                None if cache_dir is None else os.fspath(cache_dir),
                config,
                backend_id,
            )
        )

    def metrics(self) -> ImageMetrics:
        """``{"backend": ..., "blobcache": ...}`` in nydusd's shapes (``/api/v1/metrics/backend``
        and ``/api/v1/metrics/blobcache``), plus chunk-level cache counters."""
        return self._inner.metrics()

    def prefetch(
        self,
        paths: Optional[Sequence[Union[str, bytes]]] = None,
        *,
        all: bool = False,
        threads: int = 8,
        batch_size: int = 1 << 20,
        bandwidth_limit: int = 0,
    ) -> _core.PrefetchJob:
        """Fill the blob cache in background threads with ``paths`` (files or directories),
        the whole image (``all``) or, with neither, the image's own prefetch table. Returns a
        job with ``wait()`` (the errors met), ``cancel()`` and ``done``; it runs until done or
        cancelled while the image is open."""
        encoded = None if paths is None else [_image_path(p) for p in paths]
        job = self._inner.prefetch(encoded, all, threads, batch_size, bandwidth_limit)
        self._jobs = [j for j in self._jobs if not j.done] + [job]
        return job

    def cancel_prefetch(self) -> None:
        """Stop every prefetch job of this image (when it is unmounted or replaced)."""
        for j in self._jobs:
            j.cancel()
        self._jobs = []

    @property
    def prefetch_entries(self) -> int:
        """How many files and directories the image's prefetch table lists."""
        return self._inner.prefetch_entries

    @classmethod
    def open_blob(cls, blob: PathArg, *, verify: bool = True) -> Image:
        """Open a data blob that carries its own bootstrap (nydus-snapshotter layer blobs)."""
        return cls(_core.Image.open_blob(os.fspath(blob), verify))

    @staticmethod
    def inline_bootstrap(blob: PathArg) -> bytes:
        """The bootstrap a layer blob carries (``image.boot``), decompressed and checked
        against its ToC digest: what ``nydus-image merge`` takes for that layer."""
        return _core.inline_bootstrap(os.fspath(blob))

    @property
    def root_ino(self) -> int:
        return self._inner.root_ino

    @property
    def blob_ids(self) -> List[str]:
        return self._inner.blob_ids()

    def lookup(self, path: Union[str, bytes]) -> int:
        return self._inner.lookup(_image_path(path))

    def stat(self, path: Union[str, bytes]) -> StatResult:
        return StatResult(**self._inner.stat(_image_path(path)))

    def listdir(self, path: Union[str, bytes] = "/") -> Union[List[str], List[bytes]]:
        names = self._inner.listdir(_image_path(path))
        return names if isinstance(path, bytes) else [os.fsdecode(n) for n in names]

    def readdir(self, path: Union[str, bytes] = "/") -> List[Tuple[bytes, int, int]]:
        """``(name, nid, dirent type)`` of every entry, ``.`` and ``..`` included."""
        return self._inner.readdir(_image_path(path))

    def readlink(self, path: Union[str, bytes]) -> Union[str, bytes]:
        target = self._inner.readlink(_image_path(path))
        return target if isinstance(path, bytes) else os.fsdecode(target)

    def listxattr(self, path: Union[str, bytes]) -> List[str]:
        return [os.fsdecode(n) for n in self._inner.listxattr(_image_path(path))]

    def listxattr_raw(self, path: Union[str, bytes]) -> List[bytes]:
        """Attribute names as the image stores them (not decoded)."""
        return self._inner.listxattr(_image_path(path))

    def getxattr(self, path: Union[str, bytes], name: Union[str, bytes]) -> bytes:
        return self._inner.getxattr(_image_path(path), os.fsencode(name))

    def read(self, path: Union[str, bytes], offset: int = 0, size: int = -1) -> bytes:
        if offset < 0:
            raise InvalidArgumentError(errno.EINVAL, f"negative read offset {offset}")
        if size < 0:
            size = max(self._inner.stat(_image_path(path))["st_size"] - offset, 0)
        return self._inner.read(_image_path(path), offset, size)

    def walk(self, top: str = "/") -> Iterator[Tuple[str, List[str], List[str]]]:
        """Yield (dirpath, dirnames, filenames) like ``os.walk``, top-down. Entry types come
        from the directory itself (no stat per entry). A directory reachable twice (a
        corrupt image) raises CorruptImageError instead of looping."""
        stack = [(top, self.lookup(top))]
        seen = set()
        while stack:
            d, nid = stack.pop()
            if nid in seen:
                raise CorruptImageError(errno.EIO, f"directory {d} (inode {nid}) is reachable twice")
            seen.add(nid)
            dirs: List[str] = []
            files: List[str] = []
            subdirs: List[Tuple[str, int]] = []
            for raw, child, ftype in self._inner.readdir(os.fsencode(d)):
                if raw in (b".", b".."):
                    continue
                name = os.fsdecode(raw)
                if ftype == _DIRENT_DIR:
                    dirs.append(name)
                    subdirs.append((d.rstrip("/") + "/" + name, child))
                else:
                    files.append(name)
            yield d, dirs, files
            stack.extend(reversed(subdirs))

    def inspect(self) -> InspectReport:
        return self._inner.inspect()

    def check(self, *, blobs: bool = True) -> CheckReport:
        return self._inner.check(blobs)

    def unpack_tar(self, output: PathArg) -> UnpackReport:
        return self._inner.unpack_tar(os.fspath(output))

    def unpack_dir(self, output: PathArg) -> UnpackReport:
        return self._inner.unpack_dir(os.fspath(output))

    def export_block(self, output: PathArg) -> int:
        return self._inner.export_block(os.fspath(output))

    def export_flat_blob(self, output: PathArg, index: int = 0) -> int:
        return self._inner.export_flat_blob(index, os.fspath(output))
