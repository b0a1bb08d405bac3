"""The state a daemon hands to its successor through the supervisor (spec §4.4), and the
failover policies applied when taking it over (§4.7).

The format is ours, versioned, and documented in ``docs/daemon-state.md``::

    magic    8 bytes   b"NYHSTATE"
    version  u32 LE    STATE_VERSION
    length   u64 LE    payload length
    payload  JSON      UTF-8
    digest   32 bytes  SHA-256 of the payload

The payload carries everything a successor needs without the command line: the daemon's
mountpoint, threads and policy, the FUSE connection id, the fuse-backend-rs ``Vfs`` state
(negotiated INIT options and the pseudo-directory tree), every RAFS instance with its raw
config and its Vfs index (so kernel-visible inode numbers stay valid), the hot-reloaded
runtime config, and each instance's blob-cache location. The fd itself travels beside it."""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import struct
from typing import Any, Dict, Optional

from nydus_hybrid import log
from nydus_hybrid.lifecycle.errors import StateError

MAGIC = b"NYHSTATE"
STATE_VERSION = 1
_HEADER = struct.Struct("<8sIQ")
_DIGEST = 32
POLICIES = ("none", "resend", "flush")
FUSE_NOTIFY_RESEND = 7  # protocol 7.40, Linux 6.9 and later


def _digest(payload: bytes) -> bytes:
    import hashlib  # here, not at start-up: loading OpenSSL is a few ms a mount need not wait for

    return hashlib.sha256(payload).digest()


def encode(doc: Dict[str, Any]) -> bytes:
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return _HEADER.pack(MAGIC, STATE_VERSION, len(payload)) + payload + _digest(payload)


def decode(data: bytes) -> Dict[str, Any]:
    if len(data) < _HEADER.size:
        raise StateError(f'Upgrade(Restore("state truncated: {len(data)} bytes, shorter than its header"))')
    magic, version, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateError('Upgrade(Restore("not a nydus-hybrid daemon state (bad magic)"))')
    if version > STATE_VERSION:
        raise StateError(
            f"Upgrade(Restore(\"state format version {version} is newer than this daemon's "
            f'({STATE_VERSION}); take it over with a newer daemon"))'
        )
    if version < 1:
        raise StateError(f'Upgrade(Restore("state format version {version} is not valid"))')
    end = _HEADER.size + length
    if len(data) != end + _DIGEST:
        raise StateError(f'Upgrade(Restore("state truncated or padded: {len(data)} bytes, expected {end + _DIGEST}"))')
    payload = data[_HEADER.size : end]
    if _digest(payload) != data[end:]:
        raise StateError('Upgrade(Restore("state corrupt: checksum mismatch"))')
    try:
        doc: Dict[str, Any] = json.loads(payload)
        _check(doc)
    except (ValueError, KeyError, TypeError) as e:
        raise StateError(f'Upgrade(Restore("state corrupt: {e}"))') from e
    return doc


def _check(doc: Dict[str, Any]) -> None:
    """Field presence and types, so a restore never fails half-way on a bad field."""
    d = doc["daemon"]
    if d.get("mode") == "singleton":
        _check_singleton(doc)
        return
    if (
        not isinstance(d["mountpoint"], str)
        or not isinstance(d["threads"], int)
        or d["failover_policy"] not in POLICIES
    ):
        raise ValueError("daemon section malformed")
    base64.b64decode(doc["fuse"]["vfs_state"], validate=True)
    if not isinstance(doc["fuse"]["conn_id"], (int, type(None))):
        raise ValueError("fuse.conn_id must be an integer")
    for m in doc["mounts"]:
        if not (
            isinstance(m["mountpoint"], str)
            and isinstance(m["source"], str)
            and isinstance(m["config"], str)
            and isinstance(m["index"], int)
            and 0 <= m["index"] < 256
        ):
            raise ValueError(f"mount entry malformed: {sorted(m)}")
    if not isinstance(doc["runtime_config"], dict):
        raise ValueError("runtime_config must be an object")


def _check_singleton(doc: Dict[str, Any]) -> None:
    """A singleton's state: threads, the fscache dir, and the blob entries to re-add."""
    d = doc["daemon"]
    if (
        not isinstance(d["threads"], int)
        or not 1 <= d["threads"] <= 1024
        or not isinstance(d["fscache_dir"], (str, type(None)))
    ):
        raise ValueError("daemon section malformed")
    for e in doc["fscache"]["blob_entries"]:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("id"), str)
            and isinstance(e.get("domain_id"), str)
            and isinstance(e.get("config_v2"), dict)
        ):
            raise ValueError("fscache blob entry malformed")
    if not isinstance(doc["runtime_config"], dict):
        raise ValueError("runtime_config must be an object")


def vfs_state(doc: Dict[str, Any]) -> bytes:
    return base64.b64decode(doc["fuse"]["vfs_state"])


def apply_failover_policy(policy: str, fuse_fd: int, conn_id: Optional[int]) -> str:
    """Deal with requests the previous daemon read but never answered (spec §4.7). Returns
    what was done; a failure is logged, never raised (the takeover goes on)."""
    if policy == "none":
        return "none"
    if policy == "resend":
        try:
            # A notification: unique 0, `error` carries the code, no payload.
            os.write(fuse_fd, struct.pack("<IiQ", 16, FUSE_NOTIFY_RESEND, 0))
            return "resend: FUSE_NOTIFY_RESEND"
        except OSError as e:
            fallback = _write_conn_knob(conn_id, "resend")
            if fallback:
                return fallback
            code = e.errno if e.errno is None else errno.errorcode.get(e.errno, e.errno)
            log.event(
                "failover_policy_failed",
                level=logging.WARNING,
                policy=policy,
                error=f"FUSE_NOTIFY_RESEND: {code} (kernel before 6.9?)",
            )
            return "resend: unsupported"
    done = _write_conn_knob(conn_id, "flush")
    if not done:
        log.event(
            "failover_policy_failed",
            level=logging.WARNING,
            policy=policy,
            error="no connections/<id>/flush control file (a vendor-kernel feature)",
        )
    return done or "flush: unsupported"


def _write_conn_knob(conn_id: Optional[int], knob: str) -> Optional[str]:
    if conn_id is None:
        return None
    for base in ("/proc/sys/fs/fuse/connections", "/sys/fs/fuse/connections"):
        path = f"{base}/{conn_id}/{knob}"
        try:
            with open(path, "w") as f:
                f.write("1")
            return f"{knob}: {path}"
        except OSError:
            continue
    return None
