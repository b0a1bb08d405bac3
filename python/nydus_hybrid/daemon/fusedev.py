"""The ``fuse`` daemon (spec §3.3-3.4, §4): RAFS instances on one FUSE mount.

A normal start mounts FUSE and the initial instance and reaches RUNNING *before* the API
socket exists, so a client never sees INIT. With ``--upgrade``, or when a crashed
predecessor is detected (its mount is still there and its socket file refuses
connections), nothing is mounted and the daemon waits in INIT for a takeover. SIGTERM and
SIGINT stop the workers, unmount and exit 0; ``PUT /daemon/exit`` stops without unmounting."""

from __future__ import annotations

import argparse
import base64
import errno
import json
import logging
import os
import stat
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from nydus_hybrid import log, version
from nydus_hybrid.daemon import state as st
from nydus_hybrid.daemon.base import BaseDaemon, restoring, stale_socket
from nydus_hybrid.daemon.early import CACHE_OPTS, Early
from nydus_hybrid.daemon.errors import DaemonError, NotReady, Unsupported
from nydus_hybrid.daemon.fuse_service import FuseService, check_virtual_mountpoint, config_from_localfs_dir
from nydus_hybrid.lifecycle import handover, supervisor
from nydus_hybrid.lifecycle.errors import StateError
from nydus_hybrid.mounts import mountinfo

if TYPE_CHECKING:  # TypedDicts: annotations only, kept off the daemon's start path
    from nydus_hybrid.types import InspectReport

EROFS_SUPER_MAGIC = 0xE0F5E1E2
RAFS_V6_VERSION = 0x600


def predecessor_crashed(mountpoint: str, apisock: Optional[str]) -> bool:
    """Spec §3.4: the mountpoint is still mounted and the old socket file refuses connections."""
    return mountinfo.is_mountpoint(mountpoint) and stale_socket(apisock)


class FuseDaemon(BaseDaemon):
    service: FuseService

    def __init__(self, a: argparse.Namespace):
        super().__init__(a)
        self.conn_id: Optional[int] = None  # /sys/fs/fuse/connections/<id>, for failover policies

    def make_service(self) -> FuseService:
        return FuseService(self.a.mountpoint, self.a.threads)

    # --- start-up -------------------------------------------------------------------------

    def normal_start(self, early: Optional[Early] = None) -> None:
        """Mount and serve the command line's instance, or adopt the ``early`` mount (which
        matches the command line), then RUNNING."""
        if early is not None:
            self.service.adopt(early)
            self._serving(early=True)
            return
        # One image at / for the mount's life: only then may the kernel cache listings unasked.
        self.service.mount_fuse(dedicated=bool(self.a.bootstrap) and self.a.virtual_mountpoint == "/")
        if self.a.bootstrap:
            if self.a.config:
                with open(self.a.config) as f:
                    config = f.read()
            else:
                config = config_from_localfs_dir(self.a.localfs_dir)
            prefetch = None
            if self.a.prefetch_files:
                with open(self.a.prefetch_files) as f:
                    prefetch = [line.strip() for line in f if line.strip()]
            self.service.add(self.a.virtual_mountpoint, self.a.bootstrap, config, prefetch)
        self.service.start_workers()
        self._serving(early=False)

    def _serving(self, early: bool) -> None:
        self.conn_id = mountinfo.fuse_conn_id(self.service.mountpoint)
        log.event("mounted", mountpoint=self.service.mountpoint, instances=len(self.service.instances), early=early)
        self.machine.force(st.RUNNING)
        self._push_when_initialized()

    def _push_when_initialized(self) -> None:
        """With a supervisor, hand it our state as soon as the kernel's INIT is answered, so
        a crash right after start can already fail over (only to a supervisor that takes
        pushes; see ``push_state_quietly``)."""
        if not self.a.supervisor or not supervisor.takes_pushes():
            return

        def wait_and_push() -> None:
            m = self.service.mount
            for _ in range(100):
                if m is not None and m.initialized:
                    self.push_state_quietly()
                    return
                time.sleep(0.02)

        threading.Thread(target=wait_and_push, name="state-push", daemon=True).start()

    # --- handover (spec §4) ---------------------------------------------------------------

    def state_doc(self) -> Dict[str, Any]:
        m = self.service.need_mount()
        return {
            "daemon": {
                "id": self.a.id,
                "mountpoint": self.service.mountpoint,
                "threads": self.service.threads,
                "failover_policy": self.a.failover_policy,
                "writer_version": version.__version__,
                "writer_pid": os.getpid(),
            },
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
        fd = None if m is None or not m.initialized else m.fuse_fd()
        if fd is None:
            raise NotReady("Upgrade(NotReady): the FUSE session is not initialized yet")
        sent = self.push_state(fd)
        log.event("state_sent", supervisor=self.a.supervisor, bytes=sent, mounts=len(self.service.instances))

    def _restore(self) -> None:
        started = time.monotonic()
        data, fd = self.fetch_state()
        with restoring(fd):
            doc = handover.decode(data)
            if doc["daemon"].get("mode") == "singleton":
                raise StateError('Upgrade(Restore("the state is a singleton daemon\'s, this is a fuse daemon"))')
            if doc["daemon"]["mountpoint"] != self.service.mountpoint:
                raise StateError(
                    f'Upgrade(Restore("the state is for {doc["daemon"]["mountpoint"]}, '
                    f'this daemon serves {self.service.mountpoint}"))'
                )
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
        log.event(
            "takeover",
            mounts=len(doc["mounts"]),
            policy=drained,
            from_pid=doc["daemon"].get("writer_pid"),
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    # --- API actions ----------------------------------------------------------------------

    def backend_meta(self, mountpoint: Optional[str]) -> Dict[str, Any]:
        mountpoint = check_virtual_mountpoint(mountpoint)
        inst = self.service.instances.get(mountpoint)
        if inst is None:
            raise DaemonError(f'Rafs(NotFound("no RAFS instance at {mountpoint}"))')
        return super_meta(inst.image.inspect(), CACHE_OPTS)

    # /api/v2/blobs serves fscache daemons: a fuse daemon refuses, and culls nothing.

    def _blob_api(self) -> Unsupported:
        return Unsupported('Unsupported("the blob API serves fscache daemons (singleton); this is a fuse daemon")')

    def blob_add(self, doc: Dict[str, Any]) -> None:
        raise self._blob_api()

    def blob_remove(self, domain: str, blob_id: str) -> None:
        raise self._blob_api()

    def blob_entries(self, domain: str, blob_id: str) -> List[Dict[str, Any]]:
        raise self._blob_api()

    def blob_cull(self, blob_id: str) -> None:
        pass

    def mounts_changed(self) -> None:
        """Every mount and umount refreshes the supervisor's copy of our state."""
        self.push_state_quietly()

    def prometheus(self) -> str:
        """The counters of every instance in Prometheus' text format."""
        out = []
        fops = [
            "getattr",
            "readlink",
            "open",
            "release",
            "read",
            "statfs",
            "getxattr",
            "listxattr",
            "opendir",
            "lookup",
            "readdir",
            "readdirplus",
            "access",
            "forget",
            "batch_forget",
        ]
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

    # --- shutdown -------------------------------------------------------------------------

    def _shutdown(self) -> None:
        if not self.unmount_on_exit:
            log.event("exit", unmounted=False)
            return
        if self.machine.state == st.RUNNING:
            self.machine.fire("stop", self.service.stop_workers)
        if self.machine.state in (st.READY, st.INIT):
            self.machine.fire("stop", self.service.umount)
        log.event("exit", unmounted=True)


def _usable_mountpoint(path: str) -> bool:
    """A directory, or a mount already there (a predecessor's, to take over: never stat it,
    that is a FUSE request nobody may be serving), or a dead FUSE mount (ENOTCONN)."""
    if mountinfo.is_mountpoint(mountinfo.mountpoint_path(path)):
        return True
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as e:
        return e.errno in (errno.ENOTCONN, errno.ECONNABORTED)


def run(a: argparse.Namespace, early: Optional[Early] = None) -> int:
    """``nydusd fuse``: mount and serve (or wait for a takeover), then the API until stopped.
    ``early`` is the mount ``daemon.early`` made for this command line, if any."""
    if early is not None and not early.matches(a):
        early.undo()
        early = None
    if a.shared_dir:
        print(
            "nydusd: error: --shared-dir (passthrough) is not supported: nydus-hybrid serves RAFS only", file=sys.stderr
        )
        return 1
    if not _usable_mountpoint(a.mountpoint):
        print(f"nydusd: error: mountpoint {a.mountpoint} is not a directory", file=sys.stderr)
        return 1
    d = FuseDaemon(a)
    crashed = early is None and predecessor_crashed(mountinfo.mountpoint_path(a.mountpoint), a.apisock)
    try:
        if a.apisock and (a.upgrade or crashed):
            log.event("waiting_for_takeover", upgrade=a.upgrade, crashed=crashed)
        else:
            d.normal_start(early)
    except Exception as e:  # a failed start is one clear line and exit 1, never a traceback
        print(f"nydusd: error: {e}", file=sys.stderr)
        d.service.umount()
        return 1
    rc = d.run()
    if not d.unmount_on_exit:
        # PUT /daemon/exit keeps the mount, but the Rust FUSE session unmounts when it is
        # dropped at interpreter teardown: leave without running finalizers.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def super_meta(info: InspectReport, cache: Mapping[str, Any]) -> Dict[str, Any]:
    """nydusd's RafsSuperMeta dump (spec §8.7) from our ``inspect`` facts: its field names
    for the superblock and tables, plus the blob list. Diagnostic only."""
    sb = info["superblock"]

    def timeout(secs: float) -> Dict[str, int]:
        return {"secs": int(secs), "nanos": round((secs - int(secs)) * 1e9)}

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
