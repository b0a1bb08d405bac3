"""Thin devices in an existing thin pool (containerd's `PoolDevice`, spec B6). Every
device-mapper operation is wrapped in a trying state and a success state in the pool
metadata; a failure keeps the trying state and records the error, and the rollbacks leave
no device in the pool that the metadata does not know. After a crash, `reconcile` marks
every device caught between states Faulty (its id is never reused) and re-activates
Activated devices that are not live (after a reboot)."""

from __future__ import annotations

import errno
import logging
import shutil
from typing import Callable, List

from nydus_hybrid import log
from nydus_hybrid.devmapper import dmsetup
from nydus_hybrid.devmapper.dmsetup import DmError
from nydus_hybrid.devmapper.metadata import DeviceInfo, DeviceState, PoolMetadata

S = DeviceState
# States a device rests in; any other state after a restart means an operation was cut off.
SETTLED = {S.SUSPENDED, S.RESUMED, S.DEACTIVATED, S.REMOVED, S.FAULTY}


class PoolError(Exception):
    pass


class PoolDevice:
    def __init__(self, pool_name: str, metadata: PoolMetadata, discard_blocks: bool = False) -> None:
        if not pool_name:
            raise PoolError("pool_name is empty")
        self.pool = pool_name
        self.md = metadata
        self.discard_blocks = discard_blocks
        dmsetup.version()  # dmsetup is installed and the kernel has device-mapper
        if discard_blocks and shutil.which(dmsetup.BLKDISCARD) is None:
            raise PoolError("discard_blocks needs blkdiscard on PATH (util-linux)")
        if dmsetup.try_info(pool_name) is None:
            raise PoolError(f"thin pool {pool_name} does not exist (/dev/mapper/{pool_name})")
        self.reconcile()

    # -- the wrapper of every operation

    def _transition(self, name: str, trying: DeviceState, success: DeviceState, op: Callable[[], None]) -> None:
        self.md.change_device_state(name, trying)
        try:
            op()
        except DmError as e:
            self.md.change_device_state(name, trying, str(e))
            raise
        self.md.change_device_state(name, success)

    # -- creation

    def create_thin_device(self, name: str, size: int) -> DeviceInfo:
        """A new thin device of `size` bytes, created in the pool and activated."""
        info = self.md.add_device(name, size)
        try:
            self._transition(name, S.CREATING, S.CREATED, lambda: dmsetup.create_thin(self.pool, info.device_id))
        except DmError as e:
            self.md.mark_faulty(name, str(e))
            raise
        self._activate_or_roll_back(info)
        return self.md.get_device(name)

    def create_snapshot_device(self, parent_name: str, name: str, size: int) -> DeviceInfo:
        """A thin snapshot of `parent_name`, activated. A loaded parent is suspended while
        the snapshot is taken (its writes must be flushed), then resumed."""
        parent = self.md.get_device(parent_name)
        info = self.md.add_device(name, size, parent_name)
        loaded = dmsetup.is_loaded(parent_name)
        if loaded:
            try:
                self.suspend_device(parent_name)
            except DmError as e:
                self.md.mark_faulty(name, f"suspending {parent_name}: {e}")
                raise
        try:
            self._transition(
                name, S.CREATING, S.CREATED, lambda: dmsetup.create_snap(self.pool, info.device_id, parent.device_id)
            )
        except DmError as e:
            self.md.mark_faulty(name, str(e))
            raise
        finally:
            if loaded:
                try:
                    self.resume_device(parent_name)
                except DmError as e:  # the snapshot is made; the parent's state records this
                    log.event("devmapper_resume_failed", logging.WARNING, device=parent_name, error=str(e))
        self._activate_or_roll_back(info)
        return self.md.get_device(name)

    def _activate_or_roll_back(self, info: DeviceInfo) -> None:
        try:
            self.activate_device(info.name)
        except DmError as e:
            self._roll_back_created(info, e)
            raise

    def _roll_back_created(self, info: DeviceInfo, cause: DmError) -> None:
        """A device created in the pool but not activated: delete it from the pool and
        forget it; when even that fails, quarantine its id."""
        try:
            self._transition(info.name, S.REMOVING, S.REMOVED, lambda: self._delete(info.device_id))
        except DmError as e:
            self.md.mark_faulty(info.name, f"{cause}; rolling back: {e}")
            return
        try:
            self.remove_device(info.name)
        except DmError as e:
            self.md.mark_faulty(info.name, f"{cause}; rolling back: {e}")

    def _delete(self, device_id: int) -> None:
        try:
            dmsetup.delete_device(self.pool, device_id)
        except DmError as e:
            if e.errno != errno.ENODATA:  # already gone from the pool
                raise

    # -- state changes

    def activate_device(self, name: str) -> None:
        d = self.md.get_device(name)
        self._transition(
            name, S.ACTIVATING, S.ACTIVATED, lambda: dmsetup.activate(name, self.pool, d.device_id, d.size)
        )

    def suspend_device(self, name: str) -> None:
        self._transition(name, S.SUSPENDING, S.SUSPENDED, lambda: dmsetup.suspend(name))

    def resume_device(self, name: str) -> None:
        self._transition(name, S.RESUMING, S.RESUMED, lambda: dmsetup.resume(name))

    def deactivate_device(self, name: str, deferred: bool = False, force: bool = False) -> None:
        """Unload the device (nothing to do when it is not loaded). With `discard_blocks`,
        a non-deferred deactivation first discards the blocks of an unopened device."""
        if not dmsetup.is_loaded(name):
            return

        def op() -> None:
            if self.discard_blocks and not deferred:
                found = dmsetup.try_info(name)
                if found is not None and found.open_count == 0:
                    dmsetup.discard(name)
            dmsetup.remove(name, deferred=deferred, force=force, retry=True)

        self._transition(name, S.DEACTIVATING, S.DEACTIVATED, lambda: dmsetup.retry_busy(op))

    def remove_device(self, name: str) -> None:
        """Deactivate, delete from the pool and forget the device (its id is free again).
        A device someone holds open (mounted) is refused at once, untouched: a forced
        removal would swap in a table that fails every read of whoever holds it."""
        d = self.md.get_device(name)
        found = dmsetup.try_info(name)
        if found is not None and found.open_count > 0:
            raise DmError(
                errno.EBUSY, ["remove", name], f"{name} is open ({found.open_count} holders): unmount it first"
            )
        self.deactivate_device(name, deferred=False, force=True)
        self._transition(name, S.REMOVING, S.REMOVED, lambda: self._delete(d.device_id))
        self.md.remove_device(name)

    def mark_removed(self, name: str) -> None:
        """`async_remove`: the device stays until Cleanup removes it."""
        self.md.change_device_state(name, S.REMOVED)

    def remove_pool(self) -> None:
        """Deactivate every device (deferred, forced), then the pool itself (tests)."""
        for d in self.md.walk_devices():
            try:
                self.deactivate_device(d.name, deferred=True, force=True)
            except DmError as e:
                log.event("devmapper_deactivate_failed", logging.WARNING, device=d.name, error=str(e))
        dmsetup.remove(self.pool, deferred=True, force=True, retry=True)

    # -- reading

    def get_usage(self, name: str) -> int:
        """Bytes the device has mapped in the pool."""
        return dmsetup.mapped_bytes(name)

    def is_activated(self, name: str) -> bool:
        return dmsetup.is_activated(name)

    def is_loaded(self, name: str) -> bool:
        return dmsetup.is_loaded(name)

    def dev_path(self, name: str) -> str:
        return dmsetup.dev_path(name)

    # -- start-up

    def reconcile(self) -> List[str]:
        """After a restart (`reconcile_states` against the live device-mapper)."""
        faulty = reconcile_states(self.md, dmsetup.is_activated, self.activate_device)
        if faulty:
            log.event("devmapper_reconciled", logging.WARNING, pool=self.pool, faulty=faulty)
        return faulty

    def close(self) -> None:
        self.md.close()


def reconcile_states(md: PoolMetadata, is_live: Callable[[str], bool], activate: Callable[[str], None]) -> List[str]:
    """Start-up reconciliation: devices in between states go Faulty; Activated ones that
    `is_live` says are gone (a reboot) are activated again, or go Faulty when that fails.
    Settled states are left alone. Returns the names marked Faulty."""
    faulty = []
    for d in md.walk_devices():
        if d.state in SETTLED:
            continue
        if d.state == S.ACTIVATED:
            if not is_live(d.name):
                try:
                    activate(d.name)
                except DmError as e:
                    md.mark_faulty(d.name, f"re-activating after a restart: {e}")
                    faulty.append(d.name)
            continue
        md.mark_faulty(d.name, f"found {d.state} at start-up: an operation was cut off")
        faulty.append(d.name)
    return faulty
