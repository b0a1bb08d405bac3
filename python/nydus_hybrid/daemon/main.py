"""Start-up, crash detection, signals and shutdown of the daemon (spec §3.3–3.4, §6).

A normal fuse start mounts FUSE and the initial instance and reaches RUNNING *before* the
API socket exists, so a client never sees INIT. With ``--upgrade``, or when a crashed
predecessor is detected (its mount is still there and its socket file refuses
connections), nothing is mounted and the daemon waits in INIT for a takeover. SIGTERM and
SIGINT stop the workers, unmount and exit 0; ``PUT /daemon/exit`` stops without unmounting."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import errno
import json
import logging
import logging.handlers
import os
import signal
import socket
import stat
import sys
import threading
import time
from contextlib import contextmanager
from typing import Optional

from nydus_hybrid import _core, log, supervisor
from nydus_hybrid.daemon import args as dargs
from nydus_hybrid.daemon import handover
from nydus_hybrid.daemon import state as st
from nydus_hybrid.daemon.api import Api, serve
from nydus_hybrid.daemon.errors import BadRequest, DaemonError, NotReady, Unsupported
from nydus_hybrid.daemon.service import (CACHE_OPTS, FuseService, check_virtual_mountpoint, config_from_localfs_dir,
                                         is_mountpoint, mountpoint_path)

LOG = logging.getLogger("nydus_hybrid.daemon")
LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR, "off": logging.CRITICAL + 10}
RUNTIME_KEYS = ("registry_auth", "proxy_url", "dragonfly_scheduler_endpoint")


def version_text() -> str:
    return "\n".join([f"Version:\t{_core.__version__}", f"Git Commit:\t{_core.GIT_COMMIT}",
                      "Build Time:\tunknown", "Profile:\trelease", f"Rustc:\t{sys.version.split()[0]} (python)"])


class Events:
    """The error ring buffer of `/daemon/events` (spec §8.6)."""

    MAX_ERRORS, MAX_SIZE = 500, 51200

    def __init__(self):
        self.errors: list = []
        self.total_errors = 0
        self.lock = threading.Lock()

    def add(self, message: str) -> None:
        line = f"{email.utils.formatdate(usegmt=True)} - {message}"
        with self.lock:
            self.total_errors += 1
            self.errors.append(line)
            while len(self.errors) > self.MAX_ERRORS or sum(map(len, self.errors)) > self.MAX_SIZE:
                self.errors.pop(0)

    def to_json(self) -> dict:
        with self.lock:
            return {"max_errors": self.MAX_ERRORS, "total_errors": self.total_errors, "max_size": self.MAX_SIZE,
                    "total_size": sum(map(len, self.errors)), "errors": list(self.errors)}


class RuntimeConfig:
    """The hot-reload map of `/api/v1/config` (spec §2.6), keyed `<id>:<key>`. Registry
    credentials reach the Rust backends at once."""

    def __init__(self):
        self.values: dict = {}

    def put(self, id_: str, doc: dict) -> None:
        # nydusd parses the body as a string -> string map before it looks at the keys
        if not all(isinstance(v, str) for v in doc.values()):
            raise BadRequest("ParseBody(Error(\"values must be strings\"))")
        bad = [k for k in doc if k not in RUNTIME_KEYS]
        if bad:
            raise DaemonError(f"Configure(ResponsePayloadType) unknown key {bad[0]!r}; allowed: {', '.join(RUNTIME_KEYS)}")
        for key, value in doc.items():
            self.values[f"{id_}:{key}"] = value
            if key == "registry_auth":
                _core.set_registry_auth(id_, value)

    def restore(self, values: dict) -> None:
        """Adopt a predecessor's values (takeover); credentials reach the backends again."""
        for key, value in values.items():
            id_, _, name = key.rpartition(":")
            self.put(id_, {name: value})

    def get(self, id_: Optional[str]) -> dict:
        if id_ is None:
            return dict(self.values)
        prefix = f"{id_}:"
        return {k[len(prefix):]: v for k, v in self.values.items() if k.startswith(prefix)}


@contextmanager
def restoring(fd: int):
    """A takeover's restore: any failure in it is a DaemonError (a corrupt state must never
    take the daemon down), and the received fd is closed either way."""
    try:
        yield
    except DaemonError:
        raise
    except Exception as e:
        raise DaemonError(f"Upgrade(Restore({str(e)!r}))") from e
    finally:
        os.close(fd)


def stale_socket(apisock: Optional[str]) -> bool:
    """The API socket file is there but nobody accepts on it: its daemon died."""
    if not apisock or not os.path.exists(apisock):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(apisock)
        return False
    except OSError:
        return True
    finally:
        s.close()


def predecessor_crashed(mountpoint: str, apisock: Optional[str]) -> bool:
    """Spec §3.4: the mountpoint is still mounted and the old socket file refuses connections."""
    return is_mountpoint(mountpoint) and stale_socket(apisock)


class Daemon:
    def __init__(self, a):
        self.a = a
        self.events = Events()
        self.runtime_config = RuntimeConfig()
        self.machine = st.StateMachine(st.INIT, on_change=self._changed)
        self.service = self.make_service()
        self.stopping: Optional[asyncio.Event] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.unmount_on_exit = True
        self.conn_id: Optional[int] = None  # /sys/fs/fuse/connections/<id>, for failover policies

    def make_service(self):
        return FuseService(self.a.mountpoint, self.a.threads)

    def _changed(self, event: str, before: str, after: str) -> None:
        log.event("state", input=event, before=before, after=after)

    # --- start-up -------------------------------------------------------------------------

    def normal_start(self) -> None:
        self.service.mount_fuse()
        self.conn_id = handover.fuse_conn_id(self.service.mountpoint)
        if self.a.bootstrap:
            config = open(self.a.config).read() if self.a.config else config_from_localfs_dir(self.a.localfs_dir)
            prefetch = None
            if self.a.prefetch_files:
                prefetch = [line.strip() for line in open(self.a.prefetch_files) if line.strip()]
            self.service.add(self.a.virtual_mountpoint, self.a.bootstrap, config, prefetch)
        self.service.start_workers()
        self.machine.force(st.RUNNING)
        self._push_when_initialized()

    def _push_when_initialized(self) -> None:
        """With a supervisor, hand it our state as soon as the kernel's INIT is answered, so
        a crash right after start can already fail over."""
        if not self.a.supervisor:
            return

        def wait_and_push():
            m = self.service.mount
            for _ in range(100):
                if m is not None and m.initialized:
                    self.push_state_quietly()
                    return
                time.sleep(0.02)

        threading.Thread(target=wait_and_push, name="state-push", daemon=True).start()

    # --- handover (spec §4) ---------------------------------------------------------------

    def state_doc(self) -> dict:
        m = self.service.mount
        return {
            "daemon": {"id": self.a.id, "mountpoint": self.service.mountpoint, "threads": self.service.threads,
                       "failover_policy": self.a.failover_policy, "writer_version": _core.__version__,
                       "writer_pid": os.getpid()},
            "fuse": {"vfs_state": base64.b64encode(m.save_state()).decode(), "conn_id": self.conn_id},
            "mounts": self.service.saved_mounts(),
            "runtime_config": dict(self.runtime_config.values),
            "blob_caches": self.service.saved_caches(),
        }

    def sendfd(self) -> None:
        """PUT /daemon/fuse/sendfd: hand the FUSE fd and our state to the supervisor."""
        if not self.a.supervisor:
            raise Unsupported("Upgrade(MissingSupervisorPath): the daemon was started without --supervisor")
        m = self.service.mount
        if m is None or not m.initialized or m.fuse_fd() is None:
            raise NotReady("Upgrade(NotReady): the FUSE session is not initialized yet")
        data = handover.encode(self.state_doc())
        try:
            supervisor.push_state(self.a.supervisor, data, m.fuse_fd())
        except supervisor.SupervisorError as e:
            raise DaemonError(f"Upgrade(SendFd({str(e)!r}))") from e
        log.event("state_sent", supervisor=self.a.supervisor, bytes=len(data), mounts=len(self.service.instances))

    def push_state_quietly(self) -> None:
        """After a mount change: refresh the supervisor's copy if one is listening."""
        if not self.a.supervisor:
            return
        try:
            self.sendfd()
        except DaemonError as e:
            log.event("state_push_skipped", level=logging.DEBUG, reason=e.message)

    def takeover(self) -> None:
        """PUT /daemon/fuse/takeover: INIT -> READY once every instance is back."""
        self.machine.fire("takeover", self._restore)  # the state is checked first, as nydusd does

    def fetch_state(self) -> tuple:
        """(state bytes, fd) from our supervisor, for a takeover."""
        if not self.a.supervisor:
            raise DaemonError("Upgrade(MissingSupervisorPath): takeover needs --supervisor")
        try:
            return supervisor.fetch_state(self.a.supervisor)
        except supervisor.SupervisorError as e:
            raise DaemonError(f"Upgrade(Restore({str(e)!r}))") from e

    def _restore(self) -> None:
        started = time.monotonic()
        data, fd = self.fetch_state()
        with restoring(fd):
            doc = handover.decode(data)
            if doc["daemon"].get("mode") == "singleton":
                raise handover.StateError("Upgrade(Restore(\"the state is a singleton daemon's, this is a fuse daemon\"))")
            if doc["daemon"]["mountpoint"] != self.service.mountpoint:
                raise handover.StateError(f"Upgrade(Restore(\"the state is for {doc['daemon']['mountpoint']}, "
                                          f"this daemon serves {self.service.mountpoint}\"))")
            self.service.resume_fuse(fd, handover.vfs_state(doc))
            try:
                for m in sorted(doc["mounts"], key=lambda m: m["index"]):
                    self.service.restore(m["mountpoint"], m["source"], m["config"], m["index"], m.get("prefetch_files"))
                self.runtime_config.restore(doc["runtime_config"])
            except Exception:
                self.service.abandon_fuse()  # the mount stays with the daemon serving it
                raise
            self.conn_id = doc["fuse"]["conn_id"]
            drained = handover.apply_failover_policy(self.a.failover_policy, fd, self.conn_id)
        log.event("takeover", mounts=len(doc["mounts"]), policy=drained,
                  from_pid=doc["daemon"].get("writer_pid"), ms=round((time.monotonic() - started) * 1000, 1))

    # --- API actions ----------------------------------------------------------------------

    def info(self, backends: bool) -> dict:
        return {
            "version": {"package_ver": _core.__version__, "git_commit": _core.GIT_COMMIT, "build_time": "unknown",
                        "profile": "release", "rustc": "unknown"},
            "id": self.a.id,
            "supervisor": self.a.supervisor,
            "state": self.machine.state,
            "backend_collection": self.service.backend_collection() if backends else None,
        }

    def set_log_level(self, level: str) -> None:
        name = level.lower()
        if name not in LEVELS:
            raise DaemonError(f"Logger(\"unknown log level {level!r}\")")
        logging.getLogger(log.LOGGER_NAME).setLevel(LEVELS[name])
        # not `level=`: that is log.event's own parameter (the record's level)
        log.event("log_level", log_level=name)

    def start(self) -> None:
        self.machine.fire("start", self.service.start_workers)
        self._push_when_initialized()

    def exit(self) -> None:
        """Stop serving and exit without unmounting (hot upgrade keeps the mount)."""
        state = self.machine.state
        if state == st.RUNNING:
            self.machine.fire("stop", self.service.stop_workers)
            self.machine.fire("exit")
        elif state == st.READY:
            self.machine.fire("exit")
        elif state == st.INIT:
            self.machine.fire("stop")
        self.unmount_on_exit = False
        self._shutdown_soon()

    def _shutdown_soon(self) -> None:
        # Let the 204 go out first, then end the main loop.
        if self.loop and self.stopping:
            self.loop.call_soon_threadsafe(self.loop.call_later, 0.05, self.stopping.set)

    def backend_meta(self, mountpoint: Optional[str]) -> dict:
        mountpoint = check_virtual_mountpoint(mountpoint)
        inst = self.service.instances.get(mountpoint)
        if inst is None:
            raise DaemonError(f"Rafs(NotFound(\"no RAFS instance at {mountpoint}\"))")
        return super_meta(inst.image.inspect(), CACHE_OPTS)

    # --- /api/v2/blobs: fscache only; a fuse daemon refuses, and culls nothing -------------

    def _blob_api(self, *_args):
        raise Unsupported("Unsupported(\"the blob API serves fscache daemons (singleton); this is a fuse daemon\")")

    blob_add = blob_remove = blob_entries = _blob_api

    def blob_cull(self, blob_id: str) -> None:
        pass

    def mounts_changed(self) -> None:
        """Every mount and umount refreshes the supervisor's copy of our state."""
        self.push_state_quietly()

    def prometheus(self) -> str:
        """The counters of every instance in Prometheus' text format."""
        out = []
        fops = ["getattr", "readlink", "open", "release", "read", "statfs", "getxattr", "listxattr", "opendir",
                "lookup", "readdir", "readdirplus", "access", "forget", "batch_forget"]
        out.append("# TYPE nydus_fop_hits_total counter")
        for mp in list(self.service.instances):
            try:
                fs = self.service.fs_metrics(mp)
                be = self.service.backend_metrics(mp)
                bc = self.service.instances[mp].image.metrics()["blobcache"]
            except (DaemonError, KeyError):
                continue
            label = json.dumps(mp)
            for i, name in enumerate(fops):
                out.append(f'nydus_fop_hits_total{{mountpoint={label},op="{name}"}} {fs["fop_hits"][i]}')
                out.append(f'nydus_fop_errors_total{{mountpoint={label},op="{name}"}} {fs["fop_errors"][i]}')
            out.append(f"nydus_data_read_bytes_total{{mountpoint={label}}} {fs['data_read']}")
            out.append(f"nydus_backend_reads_total{{mountpoint={label}}} {be['read_count']}")
            out.append(f"nydus_backend_read_errors_total{{mountpoint={label}}} {be['read_errors']}")
            out.append(f"nydus_backend_read_bytes_total{{mountpoint={label}}} {be['read_amount_total']}")
            out.append(f"nydus_blobcache_chunk_hits_total{{mountpoint={label}}} {bc['chunk_hits']}")
            out.append(f"nydus_blobcache_chunk_misses_total{{mountpoint={label}}} {bc['chunk_misses']}")
        return "\n".join(out) + "\n"

    # --- running --------------------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        runner = None
        if self.a.apisock:
            if os.path.lexists(self.a.apisock):
                os.unlink(self.a.apisock)
            runner = await serve(Api(self), self.a.apisock)
            os.chmod(self.a.apisock, 0o600)
        log.event("api_ready", apisock=self.a.apisock, state=self.machine.state)
        await self.stopping.wait()
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)
        if runner is not None:
            await runner.cleanup()
        return 0

    def _shutdown(self) -> None:
        if not self.unmount_on_exit:
            log.event("exit", unmounted=False)
            return
        if self.machine.state == st.RUNNING:
            self.machine.fire("stop", self.service.stop_workers)
        if self.machine.state in (st.READY, st.INIT):
            self.machine.fire("stop", self.service.umount)
        log.event("exit", unmounted=True)


def _raise_nofile(want: int) -> None:
    """nydusd's `--rlimit-nofile` (0: leave it): many images and blobs mean many fds."""
    import resource

    if want <= 0:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    except (ValueError, OSError) as e:
        log.event("rlimit_nofile", level=logging.WARNING, wanted=want, error=str(e))


def _usable_mountpoint(path: str) -> bool:
    """A directory, or a mount already there (a predecessor's, to take over: never stat it,
    that is a FUSE request nobody may be serving), or a dead FUSE mount (ENOTCONN)."""
    if is_mountpoint(mountpoint_path(path)):
        return True
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as e:
        return e.errno in (errno.ENOTCONN, errno.ECONNABORTED)


def setup_logging(a) -> None:
    handler = None
    if a.log_file:
        if a.log_rotation_size > 0:
            handler = logging.handlers.RotatingFileHandler(a.log_file, maxBytes=a.log_rotation_size << 20, backupCount=5)
        else:
            handler = logging.FileHandler(a.log_file)
    log.setup("debug" if a.log_level == "trace" else {"warn": "warning", "off": "error"}.get(a.log_level, a.log_level),
              handler=handler)


def main(argv=None) -> int:
    a = dargs.parse(argv)
    if a.version:
        print(version_text())
        return 0
    setup_logging(a)
    if a.mode == "singleton":
        from nydus_hybrid.daemon import singleton

        _raise_nofile(a.rlimit_nofile)
        return singleton.run(a)
    if a.shared_dir:
        print("nydusd: error: --shared-dir (passthrough) is not supported: nydus-hybrid serves RAFS only", file=sys.stderr)
        return 1
    if not _usable_mountpoint(a.mountpoint):
        print(f"nydusd: error: mountpoint {a.mountpoint} is not a directory", file=sys.stderr)
        return 1
    _raise_nofile(a.rlimit_nofile)
    d = Daemon(a)
    crashed = predecessor_crashed(mountpoint_path(a.mountpoint), a.apisock)
    try:
        if a.apisock and (a.upgrade or crashed):
            log.event("waiting_for_takeover", upgrade=a.upgrade, crashed=crashed)
        else:
            d.normal_start()
    except Exception as e:  # a failed start is one clear line and exit 1, never a traceback
        print(f"nydusd: error: {e}", file=sys.stderr)
        d.service.umount()
        return 1
    rc = asyncio.run(d.run())
    if not d.unmount_on_exit:
        # PUT /daemon/exit keeps the mount, but the Rust FUSE session unmounts when it is
        # dropped at interpreter teardown: leave without running finalizers.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def super_meta(info: dict, cache: dict) -> dict:
    """nydusd's RafsSuperMeta dump (spec §8.7) from our ``inspect`` facts: its field names
    for the superblock and tables, plus the blob list. Diagnostic only."""
    sb = info["superblock"]

    def timeout(secs: float) -> dict:
        return {"secs": int(secs), "nanos": int(round((secs - int(secs)) * 1e9))}

    return {
        "magic": EROFS_SUPER_MAGIC,
        "version": RAFS_V6_VERSION,
        "sb_size": info["bootstrap_size"],
        "root_nid": sb["root_nid"],
        "root_inode": sb["root_nid"],
        "flags": {"bits": int(sb["flags"], 16)},
        "inodes_count": sb["inodes"],
        "inode_table_entries": sb["inodes"],
        "blob_table_offset": sb["blob_table"][0],
        "blob_table_size": sb["blob_table"][1],
        "chunk_table_offset": sb["chunk_table"][0],
        "chunk_table_size": sb["chunk_table"][1],
        "prefetch_table_offset": sb["prefetch_table"][0],
        "prefetch_table_entries": sb["prefetch_table"][1] // 4,  # u32 nids
        "blob_device_table_count": sb["extra_devices"],
        "meta_blkaddr": sb["meta_blkaddr"],
        "chunk_size": sb["chunk_size"],
        "block_size": sb["block_size"],
        "compressor": sb["compressor"],
        "digester": sb["digester"],
        "is_chunk_dict": False,
        "attr_timeout": timeout(cache["attr_timeout"]),
        "entry_timeout": timeout(cache["entry_timeout"]),
        "blobs": info["blobs"],
    }


EROFS_SUPER_MAGIC = 0xE0F5E1E2
RAFS_V6_VERSION = 0x600

