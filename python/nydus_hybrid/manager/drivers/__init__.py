"""Filesystem drivers of the manager: how an image becomes a mounted instance, one class per
driver (nydus-snapshotter's ``fs_driver``). ``fusedev`` serves instances from a FUSE daemon
(``nydusd fuse``); ``fscache`` binds them to the one ``singleton`` daemon and mounts EROFS
over fscache. The manager holds one driver and calls only this interface: no code outside
a driver compares driver names. A new driver is a module here plus one line in ``DRIVERS``.

Records stay driver-neutral: what only one driver needs lives in the daemon record's
``driver_options`` and the instance record's ``annotations``."""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

from nydus_hybrid.manager.drivers.base import FsDriver, InstancePlan
from nydus_hybrid.manager.drivers.fscache import FscacheDriver
from nydus_hybrid.manager.drivers.fusedev import FusedevDriver
from nydus_hybrid.manager.errors import ManagerError

__all__ = ["DRIVERS", "NAMES", "FsDriver", "InstancePlan", "get"]

DRIVERS: Dict[str, Type[FsDriver]] = {FusedevDriver.name: FusedevDriver, FscacheDriver.name: FscacheDriver}
#: Driver names, the default first.
NAMES = tuple(DRIVERS)


def get(name: str, root: str, options: Optional[Dict[str, Any]] = None) -> FsDriver:
    """The driver called ``name`` for a manager rooted at ``root``."""
    cls = DRIVERS.get(name)
    if cls is None:
        raise ManagerError(f"fs driver {name!r}: expected one of {', '.join(NAMES)}")
    return cls(root, options)
