"""fscache instances on the shared ``singleton`` daemon, in nydus-snapshotter's order (spec
§5.7, A8.1 step 6): bind the bootstrap's blob entry, then mount EROFS over fscache at the
instance's mountpoint; unmount in reverse, then cull the bootstrap's cache file.

The instance's annotations carry ``fscache.id`` (hex SHA-256 of ``nydus-snapshot-<key>``)
and ``fscache.domainid`` (the same id, or a configured shared domain)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Iterable, List

from nydus_hybrid import fscache_mount, log
from nydus_hybrid.daemon.service import is_mountpoint, mountpoint_path
from nydus_hybrid.manager.client import NydusdApiError
from nydus_hybrid.manager.errors import ManagerError

ID_KEY, DOMAIN_KEY = "fscache.id", "fscache.domainid"
NOT_FOUND_MARK = "No such file or directory"  # the snapshotter tolerates unbind errors with this


def fscache_id(key: str) -> str:
    return hashlib.sha256(f"nydus-snapshot-{key}".encode()).hexdigest()


def blob_entry(fid: str, domain: str, bootstrap: str, fuse_config: dict, work_dir: str) -> dict:
    """The BlobCacheEntry the snapshotter fills in (spec §7.4), from the image's fuse config:
    its backend, with an fscache cache in the instance's work dir."""
    backend = (fuse_config.get("device") or {}).get("backend") or {}
    if not isinstance(backend, dict) or not backend.get("type"):
        raise ManagerError("fscache instance: the config names no device.backend.type")
    return {"type": "bootstrap", "id": fid, "domain_id": domain,
            "config": {"id": fid, "backend_type": backend["type"], "backend_config": backend.get("config") or {},
                       "cache_type": "fscache", "cache_config": {"work_dir": work_dir}, "metadata_path": bootstrap}}


def _annotations(rafs: dict) -> tuple:
    ann = rafs.get("annotations") or {}
    if ID_KEY not in ann or DOMAIN_KEY not in ann:
        raise ManagerError(f"instance {rafs['snapshot_id']}: no fscache annotations")
    return ann[ID_KEY], ann[DOMAIN_KEY]


def mount_instance(d, rafs: dict) -> None:
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
            fscache_mount.mount_erofs_fscache(mp, fid, "" if domain == fid else domain)
        except OSError as e:
            raise ManagerError(f"instance {rafs['snapshot_id']}: {e}") from e


def umount_instance(d, rafs: dict) -> None:
    fid, domain = _annotations(rafs)
    try:
        d.client().unbind_blob(domain, "" if domain == fid else fid)
    except NydusdApiError as e:
        if NOT_FOUND_MARK not in e.message:
            raise
    mp = mountpoint_path(rafs["mountpoint"])
    if is_mountpoint(mp):
        try:
            fscache_mount.umount_erofs_fscache(mp)
        except OSError as e:
            raise ManagerError(f"instance {rafs['snapshot_id']}: {e}") from e
    try:
        d.client().unbind_blob(blob_id=fid)  # cull the bootstrap's cache file
    except ManagerError as e:
        log.event("fscache_cull_failed", level=logging.WARNING, key=rafs["snapshot_id"], error=str(e))


def mounted_keys(d, instances: Iterable[dict]) -> List[str]:
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
