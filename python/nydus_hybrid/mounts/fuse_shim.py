"""A fusepy-style FUSE filesystem over :class:`nydus_hybrid.Image`, served by mfusepy.

This is the **slow, scriptable path**: every FUSE request goes through libfuse's high-level
(path-based) API, ctypes and a Python method of :class:`RafsOperations`, so it is meant for
users who want to extend or instrument the filesystem in Python (subclass
``RafsOperations`` and override a method). Chunk work still happens in Rust with the GIL
released. For production mounts use the Rust server in :mod:`nydus_hybrid.mounts.fuse`
(``nydus-hybrid mount``), which answers ``/dev/fuse`` without entering Python.

Needs the ``mfusepy`` package (the maintained fusepy fork; ``pip install nydus-hybrid[fuse]``) and
libfuse 3 (Debian: ``libfuse3-3``) or libfuse 2 (``libfuse2``) on the machine::

    from nydus_hybrid import Image
    from nydus_hybrid.mounts.fuse_shim import mount

    mount(Image.open("bootstrap", "blobs/"), "/mnt/image")   # blocks until unmounted

The mount is read-only and keeps the image's inode numbers (``use_ino``), so hard links
share ``st_ino``. Errors of the core (:class:`nydus_hybrid.errors.NydusError`) reach the
caller of the system call as their ``errno`` (EIO for a corrupt chunk, ENOENT, ENODATA...).
"""

from __future__ import annotations

import errno
import functools
import os
import stat as stat_mod
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union, cast

try:
    import mfusepy
except ImportError as e:  # the package is missing
    raise ImportError(
        "nydus_hybrid.mounts.fuse_shim needs the 'mfusepy' package (pip install mfusepy, or "
        "pip install 'nydus-hybrid[fuse]'); the Rust FUSE server in nydus_hybrid.mounts.fuse "
        "needs nothing extra"
    ) from e
except OSError as e:  # mfusepy raises OSError('Unable to find libfuse') at import
    raise ImportError(
        f"nydus_hybrid.mounts.fuse_shim needs libfuse 3 or 2 (Debian: apt-get install libfuse3-3): {e}"
    ) from e

from nydus_hybrid.errors import NydusError
from nydus_hybrid.image import Image

__all__ = ["FuseOSError", "RafsOperations", "mount"]

FuseOSError = mfusepy.FuseOSError

_F = TypeVar("_F", bound=Callable[..., Any])

# mfusepy hands paths and names over as str decoded with this codec; the image wants bytes.
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"

# EROFS dirent file types (RAFS v6) -> S_IFMT bits, for readdir.
_DIRENT_MODE = {
    1: stat_mod.S_IFREG,
    2: stat_mod.S_IFDIR,
    3: stat_mod.S_IFCHR,
    4: stat_mod.S_IFBLK,
    5: stat_mod.S_IFIFO,
    6: stat_mod.S_IFSOCK,
    7: stat_mod.S_IFLNK,
}


def _b(s: str) -> bytes:
    return s.encode(_ENCODING, _ERRORS)


def _s(b: bytes) -> str:
    return b.decode(_ENCODING, _ERRORS)


def _errno_mapped(method: _F) -> _F:
    """Turn a core error into ``FuseOSError(e.errno)`` (EIO when it carries none)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except NydusError as e:
            raise FuseOSError(e.errno if isinstance(e.errno, int) and e.errno > 0 else errno.EIO) from e

    return cast(_F, wrapper)


# mfusepy ships no type information, so its base class is Any to the type checker.
class RafsOperations(mfusepy.Operations):  # type: ignore[misc]
    """Read-only fusepy ``Operations`` over one image. Times are nanoseconds (``use_ns``)."""

    use_ns = True

    def __init__(self, image: Image):
        self.image = image
        self._statfs: Optional[Dict[str, int]] = None
        # libfuse changes to "/" before serving, even in the foreground; an image opened
        # with a relative blob directory (or config) resolves it on its first read.
        self._cwd = os.getcwd()

    def init(self, path: str) -> None:
        try:
            os.chdir(self._cwd)
        except OSError:
            pass

    # ---------------------------------------------------------------------------- metadata

    @_errno_mapped
    def getattr(self, path: str, fh: Optional[int] = None) -> Dict[str, int]:
        s = self.image.stat(_b(path))
        ns = s.st_mtime_ns
        return {
            "st_mode": s.st_mode,
            "st_ino": s.st_ino,
            "st_nlink": s.st_nlink,
            "st_uid": s.st_uid,
            "st_gid": s.st_gid,
            "st_size": s.st_size,
            "st_mtime": ns,
            "st_ctime": ns,  # RAFS v6 keeps one time; EROFS reports it as all three
            "st_atime": ns,
            "st_rdev": s.st_rdev,
            "st_blocks": s.st_blocks,
            "st_blksize": 4096,
        }

    @_errno_mapped
    def readdir(self, path: str, fh: int) -> List[Tuple[str, Dict[str, int], int]]:
        # '.' and '..' come from the directory itself, with their inode numbers
        return [
            (_s(name), {"st_ino": nid, "st_mode": _DIRENT_MODE.get(ftype, 0)}, 0)
            for name, nid, ftype in self.image.readdir(_b(path))
        ]

    @_errno_mapped
    def readlink(self, path: str) -> str:
        # a bytes path gives a bytes target (Image.readlink is annotated for both)
        return _s(cast(bytes, self.image.readlink(_b(path))))

    @_errno_mapped
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.image.getxattr(_b(path), _b(name))

    @_errno_mapped
    def listxattr(self, path: str) -> List[str]:
        # raw names (bytes) from the core, decoded the way mfusepy encodes them back
        return [_s(n) for n in self.image.listxattr_raw(_b(path))]

    @_errno_mapped
    def statfs(self, path: str) -> Dict[str, int]:
        if self._statfs is None:
            info = self.image.inspect()
            sb = info["superblock"]
            bs = sb["block_size"]
            blocks = info["bootstrap_size"] // bs + sum(-(-b["uncompressed_size"] // bs) for b in info["blobs"])
            self._statfs = {
                "f_bsize": bs,
                "f_frsize": bs,
                "f_blocks": blocks,
                "f_bfree": 0,
                "f_bavail": 0,
                "f_files": sb["inodes"],
                "f_ffree": 0,
                "f_favail": 0,
                "f_namemax": 255,
            }
        return dict(self._statfs)

    @_errno_mapped
    def access(self, path: str, amode: int) -> int:
        s = self.image.stat(_b(path))
        if amode & os.W_OK:
            raise FuseOSError(errno.EROFS)
        uid, gid, _pid = mfusepy.fuse_get_context()
        if uid == 0 or amode == os.F_OK:
            return 0
        if uid == s.st_uid:
            bits = (s.st_mode >> 6) & 7
        elif gid == s.st_gid:
            bits = (s.st_mode >> 3) & 7
        else:
            bits = s.st_mode & 7
        if amode & ~bits & 7:
            raise FuseOSError(errno.EACCES)
        return 0

    # -------------------------------------------------------------------------------- data

    @_errno_mapped
    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT):
            raise FuseOSError(errno.EROFS)
        s = self.image.stat(_b(path))
        if stat_mod.S_ISDIR(s.st_mode):
            raise FuseOSError(errno.EISDIR)
        return 0  # reads go by path; there is no per-handle state

    @_errno_mapped
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.image.read(_b(path), offset, size)

    def release(self, path: str, fh: int) -> int:
        return 0


def mount(
    image: Image,
    mountpoint: Union[str, os.PathLike[str]],
    *,
    foreground: bool = True,
    threads: bool = True,
    operations: Optional[RafsOperations] = None,
    **fuse_options: Any,
) -> None:
    """Mount ``image`` (an :class:`Image`) read-only at ``mountpoint`` through mfusepy and
    serve it until it is unmounted (``fusermount3 -u`` / ``umount``) or interrupted; then
    return. With ``foreground=False`` libfuse forks a daemon and the calling process exits
    once the mount is up (the call does not return). ``threads=False`` serves one request
    at a time (libfuse ``-s``).

    Defaults, each overridable through ``fuse_options`` (libfuse ``-o`` options; ``False``
    leaves a flag out): ``ro``, ``use_ino``, ``default_permissions`` (the kernel checks the
    image's modes), ``allow_other`` when running as root (like the Rust server),
    ``kernel_cache`` and 60 s ``entry_timeout``/``attr_timeout`` (the image never changes).
    ``operations`` replaces the default ``RafsOperations(image)``, e.g. with a subclass.
    """
    ops = operations if operations is not None else RafsOperations(image)
    options = {
        "ro": True,
        "use_ino": True,
        "default_permissions": True,
        "allow_other": os.geteuid() == 0,
        "kernel_cache": True,
        "entry_timeout": 60,
        "attr_timeout": 60,
        "fsname": "rafs",
        "subtype": "nydus-hybrid-py",
    }
    options.update(fuse_options)
    mfusepy.FUSE(
        ops,
        os.fspath(mountpoint),
        foreground=foreground,
        nothreads=not threads,
        encoding=_ENCODING,
        errors=_ERRORS,
        **options,
    )
