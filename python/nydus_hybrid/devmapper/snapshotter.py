"""containerd's devmapper snapshotter (spec B7): each snapshot is a thin device
`<pool>-snap-<id>` in an existing thin pool. A snapshot without a parent is a new thin
device with a fresh file system (ext4, ext2 or xfs); a child is a thin snapshot of its
parent's device, so layers share blocks. The snapshot records live in the same metastore as
the overlay snapshotter's (`<root_path>/metadata.db`), the devices in the pool metadata
(`<root_path>/<pool_name>.db`). Each call is one metastore transaction: a device-mapper
error rolls it back, and a device made before the error is removed again."""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from typing import Dict, List

from nydus_hybrid import log
from nydus_hybrid.devmapper.config import DevmapperConfig
from nydus_hybrid.devmapper.dmsetup import DmError
from nydus_hybrid.devmapper.metadata import DeviceNotFound, DeviceState, MetadataError, PoolMetadata
from nydus_hybrid.devmapper.pool import PoolDevice, PoolError
from nydus_hybrid.mounts import syscall
from nydus_hybrid.snapshotter.errors import FailedPrecondition, NotFound, SnapshotError, Unavailable
from nydus_hybrid.snapshotter.metastore import Kind, MetaStore, Snapshot, Usage
from nydus_hybrid.snapshotter.queries import MetastoreQueries
from nydus_hybrid.snapshotter.snapshot import Mount

FSTYPE_LABEL = "containerd.io/snapshot/devmapper/fstype"


class MkfsError(Exception):
    pass


def mkfs(fs_type: str, device: str, options: str) -> None:
    """A new file system on `device`: `mkfs.ext4 -E <options>`, `mkfs.ext2 -E <options>`
    or `mkfs.xfs`; a failure carries mkfs's own output."""
    if fs_type == "xfs":
        argv = ["mkfs.xfs", device]
    else:
        argv = [f"mkfs.{fs_type}", *(["-E", options] if options else []), device]
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    except FileNotFoundError:
        raise MkfsError(f"{argv[0]} is not installed (e2fsprogs, xfsprogs)") from None
    if p.returncode != 0:
        # One line: mkfs's first lines say what went wrong (the rest is its usage text).
        lines = [line.strip() for line in p.stdout.splitlines() if line.strip()]
        log.event("mkfs_failed", logging.WARNING, command=argv, output=p.stdout[-4000:])
        raise MkfsError(f"{' '.join(argv)} failed: {' / '.join(lines[:3])[:400]}")


class DevmapperSnapshotter(MetastoreQueries):
    def __init__(self, cfg: DevmapperConfig) -> None:
        self.cfg = cfg
        os.makedirs(cfg.root_path, mode=0o700, exist_ok=True)
        self.ms = MetaStore(os.path.join(cfg.root_path, "metadata.db"))
        md = PoolMetadata(os.path.join(cfg.root_path, f"{cfg.pool_name}.db"))
        try:
            self.pool = PoolDevice(cfg.pool_name, md, cfg.discard_blocks)
        except BaseException:
            md.close()
            self.ms.close()
            raise
        self._closed = False
        self.reconcile()

    def device_name(self, snapshot_id: str) -> str:
        return f"{self.cfg.pool_name}-snap-{snapshot_id}"

    def reconcile(self) -> Dict[str, List[str]]:
        """At start-up, after the pool's own reconciliation: make the snapshots and the
        devices agree again after a crash. A device whose snapshot was never committed (a
        Prepare cut off) is removed; a snapshot whose device is gone or Faulty (a Remove
        or a Prepare cut off) is dropped; an active or view snapshot whose device was left
        deactivated (a Commit cut off) is activated again."""
        done: Dict[str, List[str]] = {"orphans_removed": [], "snapshots_dropped": [], "reactivated": []}
        prefix = f"{self.cfg.pool_name}-snap-"
        with self.ms.transaction():
            ids = self.ms.ids()
            devices = {d.name: d for d in self.pool.md.walk_devices()}
            for name, d in devices.items():
                if d.state != DeviceState.FAULTY and name.startswith(prefix) and name[len(prefix) :] not in ids:
                    self._remove_quietly(name)
                    done["orphans_removed"].append(name)
            for id_, key in ids.items():
                dev = devices.get(self.device_name(id_))
                if dev is None or dev.state in (DeviceState.FAULTY, DeviceState.REMOVED):
                    try:
                        self.ms.remove(key)  # (a Removed device then waits for Cleanup)
                        done["snapshots_dropped"].append(key)
                    except SnapshotError as e:  # it has children: leave it for the operator
                        log.event("devmapper_drop_failed", logging.WARNING, snapshot=key, error=str(e))
                elif self.ms.info(key)[1].kind != Kind.COMMITTED and not self.pool.is_activated(dev.name):
                    try:
                        self.pool.activate_device(dev.name)
                        done["reactivated"].append(key)
                    except DmError as e:
                        log.event("devmapper_reactivate_failed", logging.WARNING, device=dev.name, error=str(e))
        if any(done.values()):
            log.event("devmapper_snapshots_reconciled", logging.WARNING, **done)
        return done

    # -- creating

    def prepare(self, key: str, parent: str, lbls: Dict[str, str]) -> List[Mount]:
        return self._create(Kind.ACTIVE, key, parent, lbls)

    def view(self, key: str, parent: str, lbls: Dict[str, str]) -> List[Mount]:
        return self._create(Kind.VIEW, key, parent, lbls)

    def _create(self, kind: Kind, key: str, parent: str, lbls: Dict[str, str]) -> List[Mount]:
        with self.ms.transaction():
            fs_type = self.cfg.fs_type
            if parent:
                try:
                    fs_type = self.ms.info(parent)[1].labels.get(FSTYPE_LABEL, "ext4")
                except NotFound:
                    pass  # create() below says so, in containerd's words
            s = self.ms.create(kind, key, parent, {**lbls, FSTYPE_LABEL: fs_type})
            name = self.device_name(s.id)
            try:
                if s.parent_ids:
                    self.pool.create_snapshot_device(self.device_name(s.parent_ids[0]), name, self.cfg.base_image_size)
                else:
                    self.pool.create_thin_device(name, self.cfg.base_image_size)
            except (DmError, PoolError, MetadataError) as e:
                raise _status(f"creating device {name}", e) from None
            try:
                if not s.parent_ids:
                    mkfs(fs_type, self.pool.dev_path(name), self.cfg.mkfs_options)
                mounts = self._mounts(s, fs_type)
                _remove_lost_found(mounts[0])
            except BaseException as e:
                self._remove_quietly(name)
                if isinstance(e, (MkfsError, OSError)):
                    raise FailedPrecondition(f"snapshot {key}: {e}") from None
                raise
            return mounts

    def _remove_quietly(self, name: str) -> None:
        """Undo a device made for a call that failed after it (the metastore rolls back)."""
        try:
            self.pool.remove_device(name)
        except (DmError, MetadataError) as e:
            log.event("devmapper_undo_failed", logging.WARNING, device=name, error=str(e))
            try:
                self.pool.md.mark_faulty(name, f"undoing a failed create: {e}")
            except MetadataError:
                pass

    # -- reading

    def mounts(self, key: str) -> List[Mount]:
        s = self.ms.snapshot(key)
        return self._mounts(s, self.ms.info(key)[1].labels.get(FSTYPE_LABEL, "ext4"))

    def _mounts(self, s: Snapshot, fs_type: str) -> List[Mount]:
        options = (["nouuid"] if fs_type == "xfs" else []) + (["ro"] if s.kind != Kind.ACTIVE else [])
        return [Mount(fs_type, self.pool.dev_path(self.device_name(s.id)), tuple(options))]

    def usage(self, key: str) -> Usage:
        """A committed snapshot's stored usage; an active one's mapped bytes now, less its
        parent's (a thin snapshot shares its parent's blocks)."""
        id_, info, usage = self.ms.info(key)
        if info.kind != Kind.ACTIVE:
            return usage
        try:
            size = self.pool.get_usage(self.device_name(id_))
        except (DmError, ValueError) as e:
            raise Unavailable(f"usage of {key}: {e}") from None
        if info.parent:
            size -= self.ms.info(info.parent)[2].size
        return Usage(max(0, size), 0)

    # -- changing

    def commit(self, name: str, key: str, lbls: Dict[str, str]) -> None:
        """Record the device's mapped bytes, flush it (suspend, resume) and deactivate it
        (deferred): a committed device stays in the pool, unseen."""
        with self.ms.transaction():
            id_, info, _ = self.ms.info(key)
            device = self.device_name(id_)
            fs_type = info.labels.get(FSTYPE_LABEL, "ext4")
            try:
                used = self.pool.get_usage(device)
                self.ms.commit(key, name, Usage(used, 0), {**lbls, FSTYPE_LABEL: fs_type})
                self.pool.suspend_device(device)
                self.pool.resume_device(device)
                self.pool.deactivate_device(device, deferred=True, force=False)
            except (DmError, ValueError) as e:
                raise _status(f"committing {key} (device {device})", e) from None

    def remove(self, key: str) -> None:
        with self.ms.transaction():
            id_, _ = self.ms.remove(key)
            device = self.device_name(id_)
            try:
                if self.cfg.async_remove:
                    self.pool.mark_removed(device)
                else:
                    self.pool.remove_device(device)
            except DeviceNotFound:
                pass  # a record without a device: nothing to remove
            except (DmError, MetadataError) as e:
                raise FailedPrecondition(f"removing device {device} of {key}: {e}") from None

    def cleanup(self) -> List[str]:
        """With `async_remove`: remove every device marked Removed; every failure is
        reported together, after the others are done."""
        if not self.cfg.async_remove:
            return []
        removed, errors = [], []
        for d in self.pool.md.walk_devices():
            if d.state == DeviceState.REMOVED:
                try:
                    self.pool.remove_device(d.name)
                    removed.append(d.name)
                except (DmError, MetadataError) as e:
                    errors.append(f"{d.name}: {e}")
        if errors:
            raise FailedPrecondition("cleanup: " + "; ".join(errors))
        return removed

    def reset_pool(self) -> None:
        """Remove every recorded device (benchmark clean-up)."""
        for d in self.pool.md.walk_devices():
            self.pool.remove_device(d.name)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.close()
            self.ms.close()


def _status(what: str, e: Exception) -> SnapshotError:
    """A device-mapper failure as a gRPC status: a full or missing pool is the caller's
    precondition, anything else the service being unable."""
    return (
        FailedPrecondition(f"{what}: {e}") if isinstance(e, (PoolError, MetadataError)) else Unavailable(f"{what}: {e}")
    )


def _remove_lost_found(m: Mount) -> None:
    """Mount the new file system once and delete `lost+found` (containers should not see it)."""
    with tempfile.TemporaryDirectory(prefix="dm-mount-") as target:
        flags = syscall.MS_RDONLY if "ro" in m.options else 0
        syscall.mount(m.source, target, m.type, flags, ",".join(o for o in m.options if o != "ro"))
        try:
            lost = os.path.join(target, "lost+found")
            if os.path.isdir(lost) and not flags:
                os.rmdir(lost)
        finally:
            syscall.umount(target)
