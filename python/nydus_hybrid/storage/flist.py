"""Flists, as threefold zos's flist module does them (spec Part C1-C2), with a Nydus image
as the flist: its bootstrap is the metadata, fetched by URL and named by its md5, and its
data blobs come lazily through our backends (a registry, an HTTP server or a directory).

Under the module's root:

- ``flist/<md5>``: downloaded bootstraps; ``config/<md5>.json``: their daemon's config;
- ``ro/<md5>``: one read-only FUSE mount per image, served by one of our daemons
  (``pid/<md5>.pid``, ``log/<md5>.log``, its API socket in ``/run/nydus-hybrid/flist-<id>/``,
  since a unix socket path must stay under 108 bytes) and shared by every named mount of
  that image;
- ``cache/``: the blob cache all those daemons share;
- ``mountpoint/<name>``: the named mounts, a bind mount of ``ro/<md5>`` (read-only) or an
  overlay over it whose upper and work dirs live on the volume ``<name>`` (``Limit`` bytes,
  from the storage module).

Nothing is kept in memory: what is mounted, and which image a name uses, is read back from
the mount table, so a restarted module (or a new ``Flister``) carries on where the last
left off. One lock file serialises changes between processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterator, List, Optional, Protocol

from nydus_hybrid.blobs import cache_gc
from nydus_hybrid.client import DaemonClient
from nydus_hybrid.errors import NydusError
from nydus_hybrid.image import Image
from nydus_hybrid.mounts import mountinfo, syscall
from nydus_hybrid.storage.errors import FlistError, NotFound, StorageError
from nydus_hybrid.storage.names import check_name
from nydus_hybrid.storage.policy import DiskType

MiB = 1 << 20
DEFAULT_LIMIT = 256 * MiB  # zos's default RW size
MAX_METADATA = 256 * MiB  # a bootstrap is metadata only; anything bigger is not one
HASH = re.compile(r"^[0-9a-f]{32}$")
DAEMON_START_SECS = 30.0
STOP_SECS = 5.0
SOCKET_DIR = "/run/nydus-hybrid"


class VolumeAllocator(Protocol):
    """What the flister needs of the storage module (``StorageModule`` gives it)."""

    def create_filesystem(self, name: str, size: int, disk_type: DiskType) -> Any: ...

    def path(self, name: str) -> Any: ...

    def update_filesystem(self, name: str, size: int) -> Any: ...

    def release_filesystem(self, name: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class MountOptions:
    """zos's ``MountOptions``: ``read_only``; ``limit``, the writable layer's size in bytes;
    ``storage``, where the data blobs are (``file:///dir`` or ``/dir``, ``http(s)://host/path``
    for a plain HTTP server, ``docker://host/repo`` or ``docker+http://host:port/repo`` for a
    registry); ``persisted_volume``, an existing volume to use as the writable layer instead
    of one named after the mount; ``disk_type`` of a new volume."""

    read_only: bool = False
    limit: int = DEFAULT_LIMIT
    storage: str = ""
    persisted_volume: str = ""
    disk_type: DiskType = DiskType.SSD


def backend_config(storage: str) -> Dict[str, Any]:
    """The daemon's ``backend`` section for a storage URL."""
    u = urllib.parse.urlsplit(storage)
    if u.scheme in ("", "file"):
        path = u.path if u.scheme else storage
        if not os.path.isabs(path):
            raise FlistError(f"storage {storage!r}: a local directory must be an absolute path")
        return {"type": "localfs", "localfs": {"dir": path}}
    if u.scheme in ("http", "https") and u.netloc:
        return {"type": "http-proxy", "http-proxy": {"addr": f"{u.scheme}://{u.netloc}", "path": u.path or "/"}}
    if u.scheme in ("docker", "docker+http") and u.netloc and u.path.strip("/"):
        scheme = "http" if u.scheme == "docker+http" else "https"
        return {"type": "registry", "registry": {"host": u.netloc, "repo": u.path.strip("/"), "scheme": scheme}}
    raise FlistError(f"storage {storage!r}: not file://, http(s):// or docker(+http)://")


def _http_url(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise FlistError(f"flist url {url!r}: not an http(s) URL")
    return url


def _get(url: str, timeout: float = 30.0) -> Any:
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise FlistError(f"GET {url}: HTTP {e.code}", status=e.code) from None
    except (urllib.error.URLError, OSError) as e:
        raise FlistError(f"GET {url}: {getattr(e, 'reason', e)}") from None


def _alive(path: str) -> bool:
    """A mount whose serving daemon is gone answers ENOTCONN ("transport endpoint is not
    connected"); anything else that stats is alive."""
    try:
        os.stat(path)
        return True
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return False
        raise


def _umount(path: str) -> None:
    with contextlib.suppress(OSError):
        syscall.umount(path, lazy=True)


class Flister:
    """zos's ``Flister``: named, idempotent mounts of images by URL. ``storage`` gives the
    writable layers' volumes; ``default_storage`` is the storage URL when a mount names
    none."""

    def __init__(self, root: str, storage: VolumeAllocator, default_storage: str = "") -> None:
        self.root = os.path.realpath(root)
        self.storage = storage
        self.default_storage = default_storage
        for d in ("flist", "config", "cache", "ro", "mountpoint", "pid", "log"):
            os.makedirs(self._dir(d), exist_ok=True)
        root_id = hashlib.sha256(self.root.encode()).hexdigest()[:12]
        self.sock_dir = os.path.join(SOCKET_DIR, f"flist-{root_id}")
        os.makedirs(self.sock_dir, mode=0o700, exist_ok=True)
        self._thread_lock = threading.Lock()
        self._cleaner: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def _sock(self, hash_: str) -> str:
        return os.path.join(self.sock_dir, f"{hash_}.sock")

    def _dir(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, open(self._dir(".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    # -- the hash of an image --------------------------------------------------------------

    def flist_hash(self, url: str) -> str:
        """The md5 the server publishes at ``<url>.md5``; 404 means the server does not
        support hashes."""
        try:
            with _get(_http_url(url) + ".md5") as r:
                text = r.read(256).decode("ascii", "replace").strip()
        except FlistError as e:
            if e.status == 404:
                raise FlistError(f"{url}: hash not supported (no {url}.md5)", status=404) from None
            raise
        value = text.split()[0].lower() if text else ""
        if not HASH.match(value):
            raise FlistError(f"{url}.md5: {text[:64]!r} is not 32 hex characters")
        return value

    def _download(self, url: str) -> str:
        """Fetch the bootstrap, its md5 computed as it streams into a temporary file that is
        renamed to the hash only once it checks out as an image; returns the hash."""
        md5 = hashlib.md5()
        fd, tmp = tempfile.mkstemp(dir=self._dir("flist"), prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out, _get(_http_url(url)) as r:
                size = 0
                while chunk := r.read(1 << 20):
                    size += len(chunk)
                    if size > MAX_METADATA:
                        raise FlistError(f"{url}: larger than {MAX_METADATA} bytes: not image metadata")
                    md5.update(chunk)
                    out.write(chunk)
            value = md5.hexdigest()
            try:
                published: Optional[str] = self.flist_hash(url)
            except FlistError as e:
                if e.status != 404:  # a server without .md5 files is fine; a bad one is not
                    raise
                published = None
            if published is not None and published != value:
                raise FlistError(f"{url}: md5 {value} does not match the published {published}")
            with tempfile.TemporaryDirectory() as empty:  # the bootstrap alone, no blob read
                try:
                    Image.open(tmp, empty).check(blobs=False)
                except NydusError as e:
                    raise FlistError(f"{url}: not a usable image: {e}") from None
            os.replace(tmp, self._dir("flist", value))
            return value
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # -- read-only mounts, one per image ---------------------------------------------------

    def _ro_alive(self, hash_: str) -> bool:
        """Mounted, its daemon running, its root answering. The daemon is checked first:
        the kernel may answer a stat from its attribute cache after the daemon died."""
        ro = self._dir("ro", hash_)
        pid = self._pid(hash_)
        return pid is not None and self._is_our_daemon(pid, hash_) and mountinfo.is_mountpoint(ro) and _alive(ro)

    def _pid(self, hash_: str) -> Optional[int]:
        try:
            with open(self._dir("pid", f"{hash_}.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _start_ro(self, hash_: str, storage: str) -> None:
        """Mount ``ro/<hash>`` with a daemon of its own, repairing a dead one first."""
        ro = self._dir("ro", hash_)
        self._stop_ro(hash_)  # a dead mount, a stale pid: gone before the new daemon
        os.makedirs(ro, exist_ok=True)
        config = {
            "version": 2,
            "backend": backend_config(storage),
            "cache": {"type": "blobcache", "filecache": {"work_dir": self._dir("cache")}},
        }
        cfg = self._dir("config", f"{hash_}.json")
        with open(cfg + ".tmp", "w") as f:
            json.dump(config, f)
        os.replace(cfg + ".tmp", cfg)
        sock = self._sock(hash_)
        log = self._dir("log", f"{hash_}.log")
        cmd = [sys.executable, "-m", "nydus_hybrid.daemon", "--bootstrap", self._dir("flist", hash_)]
        cmd += ["--config", cfg, "--mountpoint", ro, "--apisock", sock, "--log-file", log]
        with open(log, "ab") as out:  # not our stdio: the daemon outlives a CLI's pipes
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        with open(self._dir("pid", f"{hash_}.pid"), "w") as f:
            f.write(str(proc.pid))
        client = DaemonClient(sock, timeout=5)
        try:
            deadline = time.monotonic() + DAEMON_START_SECS
            while not mountinfo.is_mountpoint(ro):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise FlistError(f"the daemon for {hash_} did not mount: {self._log_tail(log)}")
                time.sleep(0.02)
            client.wait_state("RUNNING", timeout=max(1.0, deadline - time.monotonic()))
        except (FlistError, TimeoutError) as e:
            self._stop_ro(hash_)
            raise FlistError(str(e)) from None
        finally:
            client.close()

    @staticmethod
    def _log_tail(log: str) -> str:
        try:
            with open(log, errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            return lines[-1] if lines else "no log"
        except OSError:
            return "no log"

    def _stop_ro(self, hash_: str) -> None:
        """Stop ``ro/<hash>``'s daemon and take its mount and files away."""
        pid = self._pid(hash_)
        if pid is not None and self._is_our_daemon(pid, hash_):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_SECS
            while self._is_our_daemon(pid, hash_) and time.monotonic() < deadline:
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                if self._is_our_daemon(pid, hash_):
                    os.kill(pid, signal.SIGKILL)
        if pid is not None:
            with contextlib.suppress(ChildProcessError):  # reap it if this process started it
                os.waitpid(pid, os.WNOHANG)
        ro = self._dir("ro", hash_)
        while mountinfo.is_mountpoint(ro):
            syscall.umount(ro, lazy=True)
        with contextlib.suppress(OSError):
            os.rmdir(ro)
        for f in (self._dir("pid", f"{hash_}.pid"), self._sock(hash_)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)

    def _is_our_daemon(self, pid: int, hash_: str) -> bool:
        """The pid is still the daemon of that image (not a reused pid, not a zombie)."""
        args = self._cmdline(pid)
        return self._dir("flist", hash_) in args

    @staticmethod
    def _cmdline(pid: int) -> List[str]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            return []

    # -- named mounts ------------------------------------------------------------------------

    def _mountpoint(self, name: str) -> str:
        check_name(name)
        return self._dir("mountpoint", name)

    def _image_of(self, path: str) -> Optional[str]:
        """The hash of the image a named mount shows: an overlay's lower dir, or the
        read-only mount whose device a bind mount shares."""
        fields = mountinfo.mount_fields(path)
        if fields is None:
            return None
        if fields["fstype"] == "overlay":
            for opt in fields["super"].split(","):
                if opt.startswith("lowerdir="):
                    return os.path.basename(opt[len("lowerdir=") :].rstrip("/"))
            return None
        for hash_ in os.listdir(self._dir("ro")):
            ro = mountinfo.mount_fields(self._dir("ro", hash_))
            if ro is not None and ro["device"] == fields["device"]:
                return hash_
        return None

    def _healthy(self, path: str) -> bool:
        if not mountinfo.is_mountpoint(path) or not _alive(path):
            return False
        hash_ = self._image_of(path)
        return hash_ is not None and self._ro_alive(hash_)

    def mount(self, name: str, url: str, opts: MountOptions = MountOptions()) -> str:
        """Mount the image at ``url`` as ``<root>/mountpoint/<name>`` and return that path;
        if it is mounted already, return it. A mount left dead by a crashed daemon is
        repaired: its read-only mount restarted, its volume kept."""
        path = self._mountpoint(name)
        if not opts.read_only and opts.limit <= 0:
            raise FlistError(f"{name}: limit must be more than 0 bytes, not {opts.limit}")
        storage = opts.storage or self.default_storage
        if not storage:
            raise FlistError(f"{name}: no storage URL given and no default")
        backend_config(storage)  # a bad URL fails before anything is made
        with self._locked():
            if self._healthy(path):
                return path
            while mountinfo.is_mountpoint(path):
                syscall.umount(path, lazy=True)
            hash_ = self._download(url)
            try:
                if not self._ro_alive(hash_):
                    self._start_ro(hash_, storage)
                os.makedirs(path, exist_ok=True)
                if opts.read_only:
                    syscall.mount(self._dir("ro", hash_), path, "none", syscall.MS_BIND)
                else:
                    self._mount_overlay(name, path, hash_, opts)
            except (OSError, StorageError):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                self._gc()
                raise
            self._gc()
            return path

    def _mount_overlay(self, name: str, path: str, hash_: str, opts: MountOptions) -> None:
        volume = opts.persisted_volume or name
        created = False
        try:
            fs = self.storage.path(volume)
        except NotFound:
            if opts.persisted_volume:
                raise
            fs = self.storage.create_filesystem(volume, opts.limit, opts.disk_type)
            created = True
        try:
            upper, work = os.path.join(fs.path, "rw"), os.path.join(fs.path, "wd")
            os.makedirs(upper, exist_ok=True)
            os.makedirs(work, exist_ok=True)
            options = f"lowerdir={self._dir('ro', hash_)},upperdir={upper},workdir={work}"
            syscall.mount("overlay", path, "overlay", syscall.MS_NOATIME, options)
        except OSError:
            if created:  # a volume made for this mount goes with it
                self.storage.release_filesystem(volume)
            raise

    def unmount(self, name: str) -> None:
        """Unmount ``name`` and delete its volume (not a persisted one: this module does not
        know it was; the caller of ``persisted_volume`` owns it)."""
        path = self._mountpoint(name)
        with self._locked():
            volume = self._volume_of(path)
            while mountinfo.is_mountpoint(path):
                syscall.umount(path, lazy=True)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(path)
            if volume == name:
                with contextlib.suppress(NotFound):
                    self.storage.release_filesystem(name)
            self._gc()

    def _volume_of(self, path: str) -> Optional[str]:
        """The volume an overlay's upper dir is on: ``<volume path>/rw``."""
        fields = mountinfo.mount_fields(path)
        if fields is None or fields["fstype"] != "overlay":
            return None
        for opt in fields["super"].split(","):
            if opt.startswith("upperdir="):
                return os.path.basename(os.path.dirname(opt[len("upperdir=") :].rstrip("/")))
        return None

    def update_mount_size(self, name: str, limit: int) -> Any:
        """Resize the writable layer of ``name``; returns its filesystem."""
        path = self._mountpoint(name)
        if limit <= 0:
            raise FlistError(f"{name}: limit must be more than 0 bytes, not {limit}")
        volume = self._volume_of(path)
        if volume is None:
            raise FlistError(f"{name}: not a writable mount")
        return self.storage.update_filesystem(volume, limit)

    def exists(self, name: str) -> bool:
        return mountinfo.is_mountpoint(self._mountpoint(name))

    def hash_from_root_path(self, name: str) -> str:
        """The md5 of the image ``name`` shows, read from the command line of the daemon
        serving it (its ``--bootstrap`` argument's basename)."""
        path = self._mountpoint(name)
        hash_ = self._image_of(path)
        pid = self._pid(hash_) if hash_ else None
        args = self._cmdline(pid) if pid else []
        if "--bootstrap" in args[:-1]:
            return os.path.basename(args[args.index("--bootstrap") + 1])
        raise FlistError(f"{name}: no daemon serves it")

    def list(self) -> List[Dict[str, Any]]:
        """The named mounts: name, path, image hash, whether writable, and the volume."""
        out = []
        for name in sorted(os.listdir(self._dir("mountpoint"))):
            path = self._dir("mountpoint", name)
            if mountinfo.is_mountpoint(path):
                volume = self._volume_of(path)
                out.append(
                    {
                        "name": name,
                        "path": path,
                        "hash": self._image_of(path),
                        "read_only": volume is None,
                        "volume": volume,
                        "alive": _alive(path),
                    }
                )
        return out

    # -- garbage ---------------------------------------------------------------------------

    def _gc(self) -> List[str]:
        """Stop the read-only mounts no named mount uses, and remove leftovers in
        ``mountpoint/`` that are not mounts; returns the hashes stopped."""
        used = set()
        for name in os.listdir(self._dir("mountpoint")):
            path = self._dir("mountpoint", name)
            if mountinfo.is_mountpoint(path):
                used.add(self._image_of(path))
            else:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        stopped = []
        for hash_ in os.listdir(self._dir("ro")):
            if hash_ not in used:
                self._stop_ro(hash_)
                stopped.append(hash_)
        return stopped

    def gc(self) -> List[str]:
        with self._locked():
            return self._gc()

    def clean_cache(self, max_age_secs: int) -> Dict[str, Any]:
        """Drop cached blobs unused for longer than ``max_age_secs`` (the blob cache's own
        GC: a blob a live daemon holds open is skipped)."""
        report = cache_gc(self._dir("cache"), max_age_secs=max_age_secs)
        return dict(report)

    def start_cleaner(self, every_secs: float, max_age_secs: int) -> None:
        """The periodic cleaner, on a daemon thread until ``close``."""

        def run() -> None:
            while not self._stop.wait(every_secs):
                with contextlib.suppress(NydusError, OSError):
                    self.clean_cache(max_age_secs)

        self._cleaner = threading.Thread(target=run, name="flist-cleaner", daemon=True)
        self._cleaner.start()

    def close(self) -> None:
        self._stop.set()
        if self._cleaner is not None:
            self._cleaner.join()
            self._cleaner = None
