"""The ``fusedev`` driver: instances are RAFS mounts on a FUSE daemon (``nydusd fuse``), at
``/<key>`` under a shared daemon's mountpoint, or at ``/`` of a dedicated daemon's."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

from nydus_hybrid.manager.drivers.base import FsDriver, InstancePlan

if TYPE_CHECKING:
    from nydus_hybrid.manager.daemon import Daemon, DaemonRecord


class FusedevDriver(FsDriver):
    name = "fusedev"

    def daemon_argv(self, r: DaemonRecord) -> Tuple[List[str], List[str], List[str]]:
        return ["fuse"], ["--thread-num", str(r.thread_num)], ["--failover-policy", r.failover_policy]

    def vestige_mounts(self, r: DaemonRecord, instances: Sequence[Dict[str, Any]]) -> List[str]:
        return [r.mountpoint]

    def plan_instance(self, key: str, d: Daemon, bootstrap: str, config_text: str) -> InstancePlan:
        return InstancePlan(config_text, os.path.join(d.record.mountpoint, key), {})

    def mount(self, d: Daemon, rafs: Dict[str, Any]) -> None:
        with open(rafs["config_path"]) as f:
            d.client().mount("/" + rafs["snapshot_id"], rafs["bootstrap"], f.read())

    def umount(self, d: Daemon, rafs: Dict[str, Any]) -> None:
        d.client().umount("/" + rafs["snapshot_id"])

    def update_auth(self, d: Daemon, rafs: Dict[str, Any], registry_auth: str) -> None:
        # PUT /api/v1/config for the instance's RAFS: `/<key>` on a shared daemon, `/` on
        # a dedicated one (its only mount).
        rafs_id = "/" + rafs["snapshot_id"] if d.record.daemon_mode == "shared" else "/"
        d.client().update_auth(rafs_id, registry_auth)

    def mounted_keys(self, d: Daemon, instances: Sequence[Dict[str, Any]]) -> List[str]:
        return [mp.lstrip("/") for mp in d.client().mountpoints()]
