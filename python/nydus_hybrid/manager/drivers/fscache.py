"""The ``fscache`` driver: instances on the shared ``singleton`` daemon, in nydus-snapshotter's
order (spec §5.7, A8.1 step 6): bind the bootstrap's blob entry, then mount EROFS over
fscache at the instance's mountpoint; unmount in reverse, then cull the bootstrap's cache
file.

The instance's annotations carry ``fscache.id`` (hex SHA-256 of ``nydus-snapshot-<key>``)
and ``fscache.domainid`` (the same id, or a configured shared domain). The daemon record's
``driver_options`` name the cachefiles working directory (``fscache_dir``) and, optionally,
its worker count (``fscache_threads``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

from nydus_hybrid import log
from nydus_hybrid.manager.client import NydusdApiError
from nydus_hybrid.manager.drivers.base import FsDriver, InstancePlan
from nydus_hybrid.manager.errors import ManagerError
from nydus_hybrid.mounts import fscache
from nydus_hybrid.mounts.mountinfo import is_mountpoint, mountpoint_path

if TYPE_CHECKING:
    from nydus_hybrid.manager.daemon import Daemon, DaemonRecord

ID_KEY, DOMAIN_KEY = "fscache.id", "fscache.domainid"
NOT_FOUND_MARK = "No such file or directory"  # the snapshotter tolerates unbind errors with this


def fscache_id(key: str) -> str:
    return hashlib.sha256(f"nydus-snapshot-{key}".encode()).hexdigest()


def blob_entry(fid: str, domain: str, bootstrap: str, fuse_config: Dict[str, Any], work_dir: str) -> Dict[str, Any]:
    """The BlobCacheEntry the snapshotter fills in (spec §7.4), from the image's fuse config:
    its backend, with an fscache cache in the instance's work dir."""
    backend = (fuse_config.get("device") or {}).get("backend") or {}
    if not isinstance(backend, dict) or not backend.get("type"):
        raise ManagerError("fscache instance: the config names no device.backend.type")
    return {
        "type": "bootstrap",
        "id": fid,
        "domain_id": domain,
        "config": {
            "id": fid,
            "backend_type": backend["type"],
            "backend_config": backend.get("config") or {},
            "cache_type": "fscache",
            "cache_config": {"work_dir": work_dir},
            "metadata_path": bootstrap,
        },
    }


def _annotations(rafs: Dict[str, Any]) -> Tuple[str, str]:
    ann = rafs.get("annotations") or {}
    if ID_KEY not in ann or DOMAIN_KEY not in ann:
        raise ManagerError(f"instance {rafs['snapshot_id']}: no fscache annotations")
    return ann[ID_KEY], ann[DOMAIN_KEY]


class FscacheDriver(FsDriver):
    name = "fscache"
    shared_only = True  # one singleton daemon serves every fscache instance

    # --- daemons --------------------------------------------------------------------------

    def record_fields(self, mountpoint: str) -> Tuple[str, Dict[str, Any]]:
        return "", {"fscache_dir": os.path.join(self.root, "cache")}

    def daemon_argv(self, r: DaemonRecord) -> Tuple[List[str], List[str], List[str]]:
        head = ["singleton", "--fscache", r.driver_options["fscache_dir"]]
        threads = int(r.driver_options.get("fscache_threads") or 0)
        if threads > 0:
            head += ["--fscache-threads", str(threads)]
        return head, [], []

    def daemon_dirs(self, r: DaemonRecord) -> List[str]:
        return [r.driver_options["fscache_dir"]]

    def vestige_mounts(self, r: DaemonRecord, instances: Sequence[Dict[str, Any]]) -> List[str]:
        return [rec["mountpoint"] for rec in instances]

    # --- instances ------------------------------------------------------------------------

    def check_config(self, key: str, config: Any, config_text: str) -> None:
        if isinstance(config, dict):
            return
        try:
            json.loads(config_text)
        except ValueError as e:
            raise ManagerError(f"instance {key}: the config is not JSON: {e}") from e

    def plan_instance(self, key: str, d: Daemon, bootstrap: str, config_text: str) -> InstancePlan:
        # The instance's config is its BlobCacheEntry; the EROFS mount is <snapdir>/mnt
        # and its fscache work dir <snapdir>/fs (spec A4).
        snapdir = os.path.join(self.root, "snapshots", key)
        fid = fscache_id(key)
        domain = self.options.get("domain") or fid
        entry = blob_entry(fid, domain, bootstrap, json.loads(config_text), os.path.join(snapdir, "fs"))
        return InstancePlan(json.dumps(entry), os.path.join(snapdir, "mnt"), {ID_KEY: fid, DOMAIN_KEY: domain})

    def mount(self, d: Daemon, rafs: Dict[str, Any]) -> None:
        fid, domain = _annotations(rafs)
        with open(rafs["config_path"]) as f:
            entry = json.load(f)
        os.makedirs(entry["config"]["cache_config"]["work_dir"], exist_ok=True)
        try:
            d.client().bind_blob(entry)
        except NydusdApiError as e:
            # Re-issued after an upgrade or a manager restart: the daemon kept it (spec 10.2).
            if "already exists" not in e.message:
                raise
        mp = mountpoint_path(rafs["mountpoint"])
        os.makedirs(mp, exist_ok=True)
        if not is_mountpoint(mp):
            try:
                fscache.mount_erofs_fscache(mp, fid, "" if domain == fid else domain)
            except OSError as e:
                raise ManagerError(f"instance {rafs['snapshot_id']}: {e}") from e

    def umount(self, d: Daemon, rafs: Dict[str, Any]) -> None:
        fid, domain = _annotations(rafs)
        try:
            d.client().unbind_blob(domain, "" if domain == fid else fid)
        except NydusdApiError as e:
            if NOT_FOUND_MARK not in e.message:
                raise
        mp = mountpoint_path(rafs["mountpoint"])
        if is_mountpoint(mp):
            try:
                fscache.umount_erofs_fscache(mp)
            except OSError as e:
                raise ManagerError(f"instance {rafs['snapshot_id']}: {e}") from e
        try:
            d.client().unbind_blob(blob_id=fid)  # cull the bootstrap's cache file
        except ManagerError as e:
            log.event("fscache_cull_failed", level=logging.WARNING, key=rafs["snapshot_id"], error=str(e))

    def mounted_keys(self, d: Daemon, instances: Sequence[Dict[str, Any]]) -> List[str]:
        """The instances the daemon serves now: its entry is registered and EROFS is mounted.
        Entries the manager does not know come back as ``fscache:<domain>/<id>``."""
        registered = {(e.get("domain_id", ""), e["id"]) for e in d.client().blob_entries("")}
        out, known = [], set()
        for rafs in instances:
            fid, domain = _annotations(rafs)
            known.add((domain, fid))
            if (domain, fid) in registered and is_mountpoint(mountpoint_path(rafs["mountpoint"])):
                out.append(rafs["snapshot_id"])
        out += [f"fscache:{dom}/{fid}" for dom, fid in sorted(registered - known)]
        return out
