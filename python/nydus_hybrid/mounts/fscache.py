"""EROFS over fscache, as the manager and the daemon see it: which cachefiles device to open,
the on-demand server that answers it (``FscacheServer``, in the Rust core), the EROFS
``fsid=`` mount, and where the kernel keeps a cookie's cache file (for culling).

``NYDUS_HYBRID_CACHEFILES=sim:<socket>`` selects the cachefiles simulator (this kernel has
no cachefiles on-demand and no EROFS-over-fscache): mounts then go to the simulator's
control socket, ``<socket>.ctl``, which plays the kernel (docs/fscache-simulator.md).
Unset, or a device path, means the real kernel interfaces."""

from __future__ import annotations

import errno
import glob
import json
import os
import socket
import struct
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from nydus_hybrid import _core
from nydus_hybrid.image import Image
from nydus_hybrid.mounts import syscall

if TYPE_CHECKING:  # TypedDicts: annotations only, kept off the daemon's start path
    from nydus_hybrid.types import BlobEntry, FscacheMetrics

ENV = "NYDUS_HYBRID_CACHEFILES"
REAL_DEVICE = "/dev/cachefiles"
SIM_PREFIX = "sim:"
MASK32 = 0xFFFFFFFF


def cachefiles_device() -> str:
    return os.environ.get(ENV) or REAL_DEVICE


def _sim_socket() -> str:
    dev = cachefiles_device()
    return dev[len(SIM_PREFIX) :] if dev.startswith(SIM_PREFIX) else ""


class FscacheServer:
    """The on-demand server of one cachefiles device: registered bootstraps and their data
    blobs, and worker threads that answer every OPEN and READ in Rust."""

    def __init__(self, inner: _core.FscacheService):
        self._inner = inner

    @classmethod
    def bind(cls, device: str, cache_dir: str, tag: Optional[str] = None) -> FscacheServer:
        """Open ``device`` and bind it fresh (``dir``, ``tag``, ``bind ondemand``)."""
        return cls(_core.FscacheService.bind(device, cache_dir, tag))

    @classmethod
    def restore(cls, device: str, fd: int) -> FscacheServer:
        """Adopt a device fd a predecessor handed over (a duplicate is kept) and ``restore``."""
        return cls(_core.FscacheService.restore(device, fd))

    def add_bootstrap(
        self, domain: str, id_: str, bootstrap: str, image: Image, prefetch: bool, entry: BlobEntry
    ) -> List[str]:
        """Register a bootstrap and its data blobs (returns their ids); ``entry`` is kept as
        given and listed back by ``entries``."""
        return self._inner.add_bootstrap(domain, id_, bootstrap, image.handle, prefetch, entry)

    def remove(self, domain: str, blob_id: str) -> None:
        self._inner.remove(domain, blob_id)

    def remove_domain(self, domain: str) -> None:
        self._inner.remove_domain(domain)

    def entries(self, prefix: str = "") -> List[Tuple[str, BlobEntry]]:
        """``(domain/id, entry)`` of the bootstraps whose key starts with ``prefix``."""
        return self._inner.entries(prefix)

    def data_refs(self) -> Dict[str, int]:
        """Each registered data blob and how many bootstraps use it."""
        return dict(self._inner.data_refs())

    def start(self, threads: int) -> None:
        self._inner.start(threads)

    def stop(self) -> None:
        self._inner.stop()

    @property
    def running(self) -> bool:
        return self._inner.running()

    def command(self, cmd: str) -> None:
        """One command to the device (``inuse <name>``, ``cull <name>``)."""
        self._inner.command(cmd)

    def device_fd(self) -> int:
        """The device fd, for the supervisor (this object keeps it open)."""
        return self._inner.device_fd()

    def metrics(self) -> FscacheMetrics:
        return self._inner.metrics()


def mount_options(fsid: str, domain_id: str = "") -> str:
    # The snapshotter's form: the domain first, when a shared domain is configured.
    return f"domain_id={domain_id},fsid={fsid}" if domain_id else f"fsid={fsid}"


def mount_erofs_fscache(target: str, fsid: str, domain_id: str = "") -> None:
    """``mount -t erofs none <target> -o [domain_id=D,]fsid=F``."""
    sim = _sim_socket()
    if sim:
        sim_request(sim, {"op": "mount", "target": target, "fsid": fsid, "domain_id": domain_id})
        return
    syscall.mount("none", target, "erofs", 0, mount_options(fsid, domain_id))


def umount_erofs_fscache(target: str) -> None:
    sim = _sim_socket()
    if sim:
        sim_request(sim, {"op": "umount", "target": target})
        return
    syscall.umount(target)


def recv_line(s: socket.socket) -> bytes:
    """One newline-terminated message of the simulator's control protocol (b"" on EOF)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    return buf


def sim_request(sock_path: str, request: Dict[str, Any], timeout: float = 120.0) -> Dict[str, Any]:
    """One request on the simulator's control socket; a refusal is an OSError."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(sock_path + ".ctl")
        except OSError as e:
            raise OSError(
                e.errno or errno.ENODEV, f"the cachefiles simulator at {sock_path} is not running: {e}"
            ) from e
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = recv_line(s)
    finally:
        s.close()
    try:
        reply: Dict[str, Any] = json.loads(buf)
    except ValueError as e:
        raise OSError(errno.EIO, f"cachefiles simulator: unreadable reply {buf[:100]!r}") from e
    if not reply.get("ok"):
        err = int(reply.get("errno") or errno.EIO)
        raise OSError(err, f"{request['op']} {request.get('target', '')}: {reply.get('message') or os.strerror(err)}")
    return reply


# --- the kernel's cache file layout (spec §5.8) --------------------------------------------


def _rotl(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & MASK32


def _h32(v: int) -> int:
    return (v * 0x61C88647) & MASK32


def fscache_hash(salt: int, data: bytes) -> int:
    """The kernel's fscache hash over little-endian u32 words (``data`` is padded)."""
    x, y = 0, salt & MASK32
    for (w,) in struct.iter_unpack("<I", data):
        x ^= w
        y ^= x
        x = _rotl(x, 7)
        x = (x + y) & MASK32
        y = _rotl(y, 20)
        y = (y * 9) & MASK32
    return _h32(y ^ _h32(x))


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def volume_hash(volume_key: str) -> int:
    raw = volume_key.encode()
    buf = bytes([len(raw) & 0xFF]) + raw
    return fscache_hash(0, buf + b"\0" * (-(len(buf) + 1) % 4 + 1))


def cookie_dir(volume_key: str, cookie_key: str) -> str:
    """``@<hh>``: the low byte of the cookie's hash, salted with its volume's."""
    return "@%02x" % (fscache_hash(volume_hash(volume_key), _pad4(cookie_key.encode())) & 0xFF)


def cache_file(fscache_dir: str, volume_key: str, cookie_key: str) -> str:
    return os.path.join(fscache_dir, "cache", f"I{volume_key}", cookie_dir(volume_key, cookie_key), f"D{cookie_key}")


def cache_files(fscache_dir: str, cookie_key: str) -> Iterator[str]:
    """Every existing cache file of this cookie, in every EROFS volume."""
    for vdir in sorted(glob.glob(os.path.join(glob.escape(fscache_dir), "cache", "Ierofs,*"))):
        path = cache_file(fscache_dir, os.path.basename(vdir)[1:], cookie_key)
        if os.path.isfile(path):
            yield path
