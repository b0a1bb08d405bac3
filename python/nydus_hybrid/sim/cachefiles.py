"""The cachefiles on-demand **simulator**: it plays the kernel's ``/dev/cachefiles`` and
EROFS over fscache for kernels without them (this machine's has neither). The daemon's
device seam (``rust/src/fscache/device.rs``, ``Simulated``) speaks to it; the manager's
mount seam (``nydus_hybrid.mounts.fscache``) asks it to mount. docs/fscache-simulator.md
describes the wire format and where it differs from the kernel.

What it does as the kernel does: one bound cache at a time (a second open gets EBUSY);
OPEN with an anonymous fd, answered by ``copen``; READ for missing ranges, completed by
the daemon; CLOSE when a mount lets an object go; ``restore`` re-sends what is pending and
makes objects reopen; when the last reference to the device closes, the cache is gone and
reads fail with EIO. The cache files live at ``<dir>/cache/I<volume>/@<hh>/D<cookie>``, and
as in the kernel a new object's file gets that name only when the object is let go (its
last mount unmounted, or the cache unbound): until then it is an unnamed temporary file
there, here a file in ``<dir>/sim-pending``.

How: the bootstrap object is filled at mount time (EROFS reads metadata through the page
cache, where no hook sees it); data objects are filled on demand. The EROFS mount itself
is a real file-backed mount of the cache files, and fanotify pre-content events
(FAN_PRE_ACCESS) on the data cache files turn each read of a hole into a READ request.
The fds the daemon writes through are opened before the fanotify mark, so its writes
raise no events of their own."""

from __future__ import annotations

import argparse
import array
import concurrent.futures
import ctypes
import errno
import json
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Set, Tuple

from nydus_hybrid import log
from nydus_hybrid.mounts import erofs, fscache, mountinfo

OPEN, CLOSE, READ = 0, 1, 2
HEADER = struct.Struct("<IIII")
PAGE = 4096
FILL_STEP = 1 << 20
MAX_DEVICES = 1024
SLOT_SIZE = 128

FAN_CLASS_PRE_CONTENT, FAN_CLOEXEC, FAN_MARK_ADD, FAN_MARK_REMOVE = 0x8, 0x1, 0x1, 0x2
FAN_PRE_ACCESS = 0x00100000
FAN_ALLOW, FAN_DENY = 0x1, 0x2
FAN_EVENT_INFO_TYPE_RANGE = 6
EVENT_META = struct.Struct("<IBBHQii")

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


@dataclass
class Obj:
    object_id: int
    volume: str
    cookie: str
    path: str  # where the cache file is now
    final: str  # its name in the cache, which `path` becomes when the object is committed
    size: int = 0
    state: str = "closed"  # closed | open | stale (its daemon went away: reopen before a READ)
    refs: int = 0
    owner: int = 0  # pid that answered the OPEN: its anon fd dies with it
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Pending:
    kind: int
    obj: Obj
    packet: bytes
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None  # copen size, "ok", "eio" or "retry"
    sender: int = 0  # pid that answered


class Cache:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.lock = threading.RLock()
        self.send_lock = threading.Lock()
        self.conn: Optional[socket.socket] = None
        self.bound = False
        self.dir: Optional[str] = None
        self.objects: Dict[Tuple[str, str], Obj] = {}  # (volume, cookie) -> object
        self.by_ino: Dict[int, Obj] = {}
        self.writers: Dict[str, int] = {}  # cache file -> fd opened before any fanotify mark
        self.pending: Dict[int, Pending] = {}
        self.retired: Set[int] = set()  # READs re-sent after a restore: a late completion is fine
        self.mounts: Dict[str, List[Tuple[str, str]]] = {}
        self.next_msg, self.next_obj = 1, 1
        self.counters = dict(opens=0, reads=0, read_bytes=0, closes=0, restores=0, protocol_errors=0, eio=0)
        self.fan: Optional[Fanotify] = None

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def violation(self, what: str) -> None:
        self.count("protocol_errors")
        log.event("sim_protocol_error", level=logging.WARNING, error=what)

    # --- the device ---------------------------------------------------------------------

    def accept(self, conn: socket.socket) -> None:
        with self.lock:
            if self.conn is not None:
                conn.send(b"EBUSY")  # the device opens once system-wide
                conn.close()
                return
            self.conn = conn
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # each command says who sent it
        conn.send(b"ok")
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        creds = struct.Struct("iII")
        while True:
            try:
                data, anc, _, _ = conn.recvmsg(PAGE, socket.CMSG_SPACE(creds.size))
            except OSError:
                data, anc = b"", []
            if not data:
                self._teardown(conn)
                return
            pid = next(
                (
                    creds.unpack_from(d)[0]
                    for lvl, t, d in anc
                    if lvl == socket.SOL_SOCKET and t == socket.SCM_CREDENTIALS and len(d) >= creds.size
                ),
                0,
            )
            try:
                self._command(data.decode("ascii").split("\n", 1)[0], pid)
            except (UnicodeDecodeError, ValueError) as e:
                self.violation(f"bad command {data[:60]!r}: {e}")

    def _command(self, cmd: str, pid: int = 0) -> None:
        word, _, arg = cmd.partition(" ")
        if word == "dir":
            if self.bound or not os.path.isabs(arg) or not os.path.isdir(arg):
                return self.violation(f"dir {arg!r}: bound already, or not an existing absolute directory")
            self.dir = arg
        elif word == "tag":
            pass
        elif word == "bind":
            if arg != "ondemand" or self.dir is None or self.bound:
                return self.violation(f"bind {arg!r} (dir {self.dir}, bound {self.bound})")
            self.bound = True
            # the kernel's unnamed files die with their cache; ours are left from a last run
            shutil.rmtree(os.path.join(self.dir, "sim-pending"), ignore_errors=True)
            log.event("sim_bound", dir=self.dir)
        elif word in ("copen", "cread"):
            msg_id, _, size = arg.partition(",")
            with self.lock:
                p = self.pending.get(int(msg_id))
            if p is None and int(msg_id) in self.retired:
                return
            if p is None or p.kind != (OPEN if word == "copen" else READ):
                return self.violation(f"{word} for unknown msg_id {msg_id}")
            p.result = int(size) if word == "copen" else "ok"
            p.sender = pid
            p.done.set()
        elif word == "restore":
            self._restore()
        elif word in ("inuse", "cull"):
            self._cull(word, arg)
        else:
            self.violation(f"unknown command {word!r}")

    def _send(self, packet: bytes, fd: Optional[int] = None) -> None:
        conn = self.conn
        if conn is None:
            raise OSError(errno.ENOBUFS, "no cache is bound")
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
        with self.send_lock:
            conn.sendmsg([packet], fds)

    def _request(self, kind: int, obj: Obj, payload: bytes, fd: Optional[int] = None) -> Pending:
        """Send one request and wait for its answer. A READ whose object's owner dies
        meanwhile comes back as "retry": its anon fd is gone, so nobody can complete it
        (the kernel closes such an object and reopens it on the next read)."""
        with self.lock:
            msg_id = self.next_msg
            self.next_msg += 1
            packet = HEADER.pack(msg_id, kind, HEADER.size + len(payload), obj.object_id) + payload
            p = self.pending[msg_id] = Pending(kind, obj, packet)
        try:
            self._send(packet, fd)
            deadline = time.monotonic() + self.timeout
            while not p.done.wait(0.1):
                if kind == READ and obj.owner and not alive(obj.owner):
                    with self.lock:
                        self.retired.add(msg_id)
                    p.result = "retry"
                    break
                if time.monotonic() > deadline:
                    p.result = "timeout"
                    break
            return p
        finally:
            with self.lock:
                self.pending.pop(msg_id, None)

    def _open_payload(self, obj: Obj) -> bytes:
        vkey, ckey = obj.volume.encode() + b"\0", obj.cookie.encode()
        return struct.pack("<IIII", len(vkey), len(ckey), 0xFFFFFFFF, 0) + vkey + ckey

    def _writer(self, path: str) -> int:
        with self.lock:
            if path not in self.writers:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
                try:
                    # The kernel writes the cache file with direct I/O: unaligned offsets,
                    # lengths or buffers fail with EINVAL there, and so they do here.
                    self.writers[path] = os.open(path, flags | os.O_DIRECT, 0o600)
                except OSError as e:
                    if e.errno != errno.EINVAL:  # a file system without O_DIRECT
                        raise
                    self.writers[path] = os.open(path, flags, 0o600)
            return self.writers[path]

    def _open_object(self, obj: Obj) -> None:
        """OPEN (or reopen) with a fresh anonymous fd; the daemon's copen gives the size."""
        anon = os.dup(self._writer(obj.path))
        try:
            p = self._request(OPEN, obj, self._open_payload(obj), anon)
        finally:
            os.close(anon)
        result = p.result
        self.count("opens")
        if not isinstance(result, int):
            raise OSError(
                errno.ETIMEDOUT if result == "timeout" else errno.EIO, f"OPEN {obj.cookie}: no copen ({result})"
            )
        if result < 0:
            raise OSError(-result, f"OPEN {obj.cookie}: the daemon answered {os.strerror(-result)}")
        obj.size, obj.owner = result, p.sender
        if os.fstat(self._writer(obj.path)).st_size < result:
            os.ftruncate(self._writer(obj.path), result)
        obj.state = "open"

    def get_object(self, volume: str, cookie: str) -> Obj:
        with self.lock:
            if not self.bound or self.dir is None:
                raise OSError(errno.ENOBUFS, "no cache is bound to the cachefiles device")
            key = (volume, cookie)
            obj = self.objects.get(key)
            if obj is None:
                final = fscache.cache_file(self.dir, volume, cookie)
                path = final if os.path.exists(final) else os.path.join(self.dir, "sim-pending", str(self.next_obj))
                obj = self.objects[key] = Obj(self.next_obj, volume, cookie, path, final)
                self.next_obj += 1
        with obj.lock:
            if obj.state != "open":
                self._open_object(obj)
            with self.lock:
                self.by_ino[os.fstat(self._writer(obj.path)).st_ino] = obj
        return obj

    def fill(self, obj: Obj, off: int, length: int) -> bool:
        """READ ``[off, off+length)`` until the daemon completes it (reopening first when the
        object's daemon went away); True when the bytes are then really there."""
        while True:
            with obj.lock:
                if not self.bound:
                    return False
                if obj.state == "open" and obj.owner and not alive(obj.owner):
                    obj.state = "stale"  # its daemon exited: the anon fd closed with it
                if obj.state != "open":
                    self._open_object(obj)
            self.count("reads")
            result = self._request(READ, obj, struct.pack("<QQ", off, length)).result
            if result == "retry":
                continue
            ok = result == "ok" and present(obj.path, off, length)
            if ok:
                self.count("read_bytes", length)
            return ok

    def _restore(self) -> None:
        """A daemon took over the device: re-send pending OPENs, make READs retry after a
        reopen (their anon fds died with the old daemon)."""
        self.count("restores")
        with self.lock:
            for obj in self.objects.values():
                if obj.state == "open":
                    obj.state = "stale"
            pending = list(self.pending.items())
        for msg_id, p in pending:
            if p.kind == READ:
                self.retired.add(msg_id)
                p.result = "retry"
                p.done.set()
            elif p.kind == OPEN:
                anon = os.dup(self._writer(p.obj.path))
                try:
                    self._send(p.packet, anon)
                finally:
                    os.close(anon)
        log.event("sim_restored", pending=len(pending))

    def _teardown(self, conn: socket.socket) -> None:
        with self.lock:
            if conn is not self.conn:
                return
            self.conn, self.bound, self.dir = None, False, None
            pending = list(self.pending.values())
            for obj in self.objects.values():
                obj.state = "closed"
                self._commit(obj)
            self.objects.clear()
        for p in pending:
            p.result = "eio"
            p.done.set()
        conn.close()
        log.event("sim_unbound", failed=len(pending))

    def _commit(self, obj: Obj) -> None:
        """Give a new object's file its name in the cache (the kernel links its tmpfile)."""
        if obj.path == obj.final or not os.path.exists(obj.path):
            return
        os.makedirs(os.path.dirname(obj.final), exist_ok=True)
        os.rename(obj.path, obj.final)
        if obj.path in self.writers:
            self.writers[obj.final] = self.writers.pop(obj.path)
        if self.fan is not None:
            self.fan.renamed(obj.path, obj.final)
        obj.path = obj.final

    def _cull(self, word: str, path: str) -> None:
        if self.dir is None or not os.path.isabs(path) or not os.path.realpath(path).startswith(self.dir + os.sep):
            return self.violation(f"{word} {path!r}: not a file of the bound cache")
        with self.lock:
            busy = any(o.path == path and o.state != "closed" for o in self.objects.values())
        if busy:
            log.event("sim_cull_refused", path=path, reason="in use")
            return
        if word == "cull":
            with self.lock:
                fd = self.writers.pop(path, None)
            if fd is not None:
                os.close(fd)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # --- EROFS over fscache ---------------------------------------------------------------

    def mount(self, target: str, fsid: str, domain_id: str) -> None:
        if not fsid or "/" in fsid or "/" in domain_id:
            raise OSError(errno.EINVAL, "fsid and domain_id must be names without '/'")
        target = os.path.realpath(target)
        with self.lock:
            if target in self.mounts:
                if mountinfo.is_mountpoint(target):
                    raise OSError(errno.EBUSY, f"{target} is mounted already")
                self._release(self.mounts.pop(target))  # unmounted behind our back
        volume = f"erofs,{domain_id or fsid}"
        boot = self.get_object(volume, fsid)
        taken = [(volume, fsid)]
        try:
            boot.refs += 1
            for off in range(0, boot.size, FILL_STEP):
                if not present(boot.path, off, min(FILL_STEP, boot.size - off)) and not self.fill(
                    boot, off, min(FILL_STEP, boot.size - off)
                ):
                    raise OSError(errno.EIO, f"the bootstrap {fsid} could not be read")
            devices = []
            for tag in device_tags(boot.path):
                obj = self.get_object(volume, tag)
                obj.refs += 1
                taken.append((volume, tag))
                assert self.fan is not None  # main() sets it before the control socket exists
                self.fan.watch(obj.path)
                devices.append(obj.path)
            # Volume directories have a comma in their names ("Ierofs,<domain>"), which the
            # mount options would split on: name the devices through our own fds.
            fds = [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in devices]
            try:
                erofs.mount_erofs(boot.path, target, [f"/proc/self/fd/{fd}" for fd in fds])
            finally:
                for fd in fds:
                    os.close(fd)
        except Exception:
            self._release(taken)
            raise
        with self.lock:
            self.mounts[target] = taken
        log.event("sim_mounted", target=target, fsid=fsid, domain=domain_id, devices=len(taken) - 1)

    def umount(self, target: str) -> None:
        target = os.path.realpath(target)
        with self.lock:
            taken = self.mounts.get(target)
        if taken is None:
            raise OSError(errno.EINVAL, f"{target} is not an EROFS-over-fscache mount")
        if mountinfo.is_mountpoint(target):
            erofs.umount(target)
        with self.lock:
            self.mounts.pop(target, None)
        self._release(taken)

    def _release(self, keys: List[Tuple[str, str]]) -> None:
        for key in keys:
            with self.lock:
                obj = self.objects.get(key)
            if obj is None:
                continue
            obj.refs -= 1
            if obj.refs <= 0:
                with self.lock:
                    self._commit(obj)
            if obj.refs <= 0 and obj.state != "closed":
                obj.state = "closed"
                with self.lock:
                    msg_id = self.next_msg
                    self.next_msg += 1
                try:
                    self._send(HEADER.pack(msg_id, CLOSE, HEADER.size, obj.object_id))
                    self.count("closes")
                except OSError:
                    pass

    def status(self) -> Dict[str, Any]:
        with self.lock:
            return {
                "ok": True,
                "bound": self.bound,
                "dir": self.dir,
                "counters": dict(self.counters),
                "pending": len(self.pending),
                "mounts": sorted(self.mounts),
                "objects": [
                    {
                        "object_id": o.object_id,
                        "volume": o.volume,
                        "cookie": o.cookie,
                        "size": o.size,
                        "open": o.state == "open",
                        "state": o.state,
                        "cache_file": o.path,
                    }
                    for o in self.objects.values()
                ],
            }


def present(path: str, off: int, length: int) -> bool:
    """Whether ``[off, off+length)`` of a sparse cache file holds data (SEEK_HOLE)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        end = min(off + length, size)
        if off >= end:
            return off < size or length == 0
        try:
            return os.lseek(fd, off, os.SEEK_HOLE) >= end
        except OSError:
            return False
    finally:
        os.close(fd)


def device_tags(bootstrap: str) -> List[str]:
    """The blob ids of the bootstrap's device slots (spec §1.2, §1.4), checked."""
    with open(bootstrap, "rb") as f:
        sb = f.read(4096)
        if len(sb) < 1114:
            raise OSError(errno.EINVAL, "the bootstrap is too short for an EROFS superblock")
        extra, slotoff = struct.unpack_from("<HH", sb, 1110)
        if extra > MAX_DEVICES:
            raise OSError(errno.EINVAL, f"{extra} extra devices is more than {MAX_DEVICES}")
        f.seek(slotoff * SLOT_SIZE)
        table = f.read(extra * SLOT_SIZE)
    if len(table) != extra * SLOT_SIZE:
        raise OSError(errno.EINVAL, "the device table runs past the end of the bootstrap")
    tags = []
    for i in range(extra):
        raw = table[i * SLOT_SIZE : i * SLOT_SIZE + 64].rstrip(b"\0")
        try:
            tag = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise OSError(errno.EINVAL, f"device slot {i}: the tag is not UTF-8") from e
        if not tag or "/" in tag or tag in tags:
            raise OSError(errno.EINVAL, f"device slot {i}: empty, unsafe or repeated tag {tag!r}")
        tags.append(tag)
    return tags


def alive(pid: int) -> bool:
    """A running process (a zombie's fds are closed already)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class Fanotify:
    """Pre-content events on data cache files: a read of a hole waits for a READ."""

    def __init__(self, cache: Cache, workers: int = 16):
        self.cache = cache
        self.fd = _libc.fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC, os.O_RDONLY | os.O_LARGEFILE)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init(FAN_CLASS_PRE_CONTENT): {os.strerror(err)}")
        self.marked: Set[str] = set()
        self.reply_lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sim-fan")
        threading.Thread(target=self._loop, daemon=True).start()

    def watch(self, path: str) -> None:
        """Watch a cache file with holes; a complete one needs no events (they would only
        cost a round trip through this process per read)."""
        with self.reply_lock:
            if path in self.marked or present(path, 0, os.path.getsize(path)):
                return
            self._mark(FAN_MARK_ADD, path)
            self.marked.add(path)

    def renamed(self, old: str, new: str) -> None:
        with self.reply_lock:  # a mark is on the inode: it follows the file
            if old in self.marked:
                self.marked.discard(old)
                self.marked.add(new)

    def unwatch_if_complete(self, path: str) -> None:
        with self.reply_lock:
            if path in self.marked and present(path, 0, os.path.getsize(path)):
                self._mark(FAN_MARK_REMOVE, path)
                self.marked.discard(path)

    def _mark(self, op: int, path: str) -> None:
        rc = _libc.fanotify_mark(self.fd, op, ctypes.c_uint64(FAN_PRE_ACCESS), -100, os.fsencode(path))
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_mark(FAN_PRE_ACCESS, {path}): {os.strerror(err)}")

    def _loop(self) -> None:
        while True:
            buf = os.read(self.fd, 65536)
            off = 0
            while off + EVENT_META.size <= len(buf):
                ev_len, _ver, _, meta_len, _mask, efd, pid = EVENT_META.unpack_from(buf, off)
                rng = _range(buf[off + meta_len : off + ev_len])
                self.pool.submit(self._handle, efd, pid, rng)
                off += max(ev_len, EVENT_META.size)

    def _handle(self, efd: int, pid: int, rng: Optional[Tuple[int, int]]) -> None:
        ok = True
        try:
            if rng is not None:
                ok = self._serve(efd, *rng)
        except Exception as e:  # a bug here must not leave the reader blocked
            log.event("sim_event_failed", level=logging.ERROR, error=str(e))
            ok = False
        finally:
            self._reply(efd, ok)

    def _serve(self, efd: int, off: int, count: int) -> bool:
        st = os.fstat(efd)
        end = min(off + count, st.st_size)
        if off >= end:
            return True
        start, stop = off & ~(PAGE - 1), min((end + PAGE - 1) & ~(PAGE - 1), st.st_size)
        path = os.readlink(f"/proc/self/fd/{efd}")
        if present(path, start, stop - start):
            self.unwatch_if_complete(path)  # e.g. filled by the daemon's prefetch
            return True
        with self.cache.lock:
            obj = self.cache.by_ino.get(st.st_ino)
        if obj is None or not self.cache.bound:
            return False
        ok = self.cache.fill(obj, start, stop - start)
        if ok:
            self.unwatch_if_complete(obj.path)
        return ok

    def _reply(self, efd: int, ok: bool) -> None:
        if not ok:
            self.cache.count("eio")
        response = FAN_ALLOW if ok else FAN_DENY | (errno.EIO << 24)
        with self.reply_lock:
            try:
                os.write(self.fd, struct.pack("<iI", efd, response))
            except OSError:  # an older kernel without errno denials
                os.write(self.fd, struct.pack("<iI", efd, FAN_DENY))
        os.close(efd)


def _range(info: bytes) -> Optional[Tuple[int, int]]:
    i = 0
    while i + 4 <= len(info):
        itype, _, ilen = struct.unpack_from("<BBH", info, i)
        if itype == FAN_EVENT_INFO_TYPE_RANGE and i + 24 <= len(info):
            return struct.unpack_from("<QQ", info, i + 8)
        if ilen == 0:
            break
        i += ilen
    return None


def serve_control(cache: Cache, path: str) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)

    def one(conn: socket.socket) -> None:
        with conn:
            buf = fscache.recv_line(conn)
            if not buf.endswith(b"\n"):
                return
            reply: Dict[str, Any]
            try:
                req = json.loads(buf)
                op = req.get("op")
                if op == "mount":
                    cache.mount(str(req["target"]), str(req["fsid"]), str(req.get("domain_id") or ""))
                    reply = {"ok": True}
                elif op == "umount":
                    cache.umount(str(req["target"]))
                    reply = {"ok": True}
                elif op == "status":
                    reply = cache.status()
                else:
                    reply = {"ok": False, "errno": errno.EINVAL, "message": f"unknown op {op!r}"}
            except OSError as e:
                reply = {"ok": False, "errno": e.errno or errno.EIO, "message": e.strerror or str(e)}
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                reply = {"ok": False, "errno": errno.EINVAL, "message": f"bad request: {e}"}
            conn.sendall(json.dumps(reply).encode() + b"\n")

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nydus_hybrid.sim.cachefiles", description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True, help="the device socket (SOCK_SEQPACKET); control is <socket>.ctl")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a copen or a READ completion")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    log.setup(a.log_level)
    cache = Cache(a.timeout)
    cache.fan = Fanotify(cache)
    for path in (a.socket, a.socket + ".ctl"):
        if os.path.exists(path):
            os.unlink(path)
    dev = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev.bind(a.socket)
    dev.listen(8)
    threading.Thread(target=serve_control, args=(cache, a.socket + ".ctl"), daemon=True).start()

    def stop(*_: object) -> NoReturn:
        for target in list(cache.mounts):
            try:
                erofs.umount(target, lazy=True)
            except OSError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.event("sim_ready", socket=a.socket)
    while True:
        conn, _ = dev.accept()
        cache.accept(conn)


if __name__ == "__main__":
    sys.exit(main())
