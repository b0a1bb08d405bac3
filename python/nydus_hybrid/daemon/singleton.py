"""The ``singleton`` daemon: EROFS over fscache (spec §3.3, §3.4, §4.5, §5). Same API,
state machine and supervisor handover as the fuse daemon; it serves blob cache entries on
the cachefiles device instead of FUSE instances.

Crash detection (§3.4): the device opens only once system-wide, so EBUSY plus a stale API
socket means a predecessor died while the supervisor still holds the device: stay INIT
and wait for a takeover. EBUSY with a live or missing socket is another daemon: exit."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

from nydus_hybrid import log
from nydus_hybrid.daemon import state as st
from nydus_hybrid.daemon.base import BaseDaemon, restoring, stale_socket
from nydus_hybrid.daemon.errors import DaemonError, Unsupported
from nydus_hybrid.daemon.fscache_service import FscacheService
from nydus_hybrid.errors import NydusError
from nydus_hybrid.lifecycle import handover
from nydus_hybrid.lifecycle.errors import StateError


class AnotherDaemon(Exception):
    pass


def config_entries(path: Optional[str]) -> List[Dict[str, Any]]:
    """``--config {"blobs": [...]}``: only ``config_v2`` entries count (spec §6.1)."""
    if not path:
        return []
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise DaemonError(f"--config {path}: {e}") from e
    blobs = doc.get("blobs", []) if isinstance(doc, dict) else None
    if not isinstance(blobs, list):
        raise DaemonError(f'{path}: expected {{"blobs": [...]}}')
    return [b for b in blobs if isinstance(b, dict) and "config_v2" in b]


class SingletonDaemon(BaseDaemon):
    service: FscacheService

    def make_service(self) -> FscacheService:
        return FscacheService(self.a.fscache, self.a.fscache_threads, self.a.fscache_tag)

    # --- start-up -------------------------------------------------------------------------

    def try_bind(self) -> bool:
        """Open and bind the device. False: it is held by a dead predecessor's supervisor."""
        try:
            self.service.bind()
            return True
        except NydusError as e:
            if getattr(e, "errno", None) != errno.EBUSY:
                raise
        if stale_socket(self.a.apisock):
            return False
        raise AnotherDaemon(f"{self.service.device} is busy: another daemon is running")

    def _push_when_initialized(self) -> None:
        self.push_state_quietly()  # no FUSE INIT to wait for

    def normal_start(self) -> None:
        for entry in config_entries(self.a.config):
            self.service.add_entry(entry)
        self.service.start_workers()
        self.machine.force(st.RUNNING)
        self.push_state_quietly()

    # --- handover -------------------------------------------------------------------------

    def state_doc(self) -> Dict[str, Any]:
        return {
            "daemon": {
                "id": self.a.id,
                "mode": "singleton",
                "threads": self.service.threads,
                "fscache_dir": self.service.dir,
                "writer_pid": os.getpid(),
            },
            "fscache": {"blob_entries": self.service.saved_entries()},
            "runtime_config": dict(self.runtime_config.values),
        }

    def sendfd(self) -> None:
        if not self.a.supervisor:
            return  # spec §4.3: a silent 204 in singleton mode
        fd = self.service.device_fd()
        if fd is None:
            raise Unsupported("Upgrade(Unsupported): no fscache device to hand over (started without --fscache)")
        sent = self.push_state(fd)
        log.event("state_sent", supervisor=self.a.supervisor, bytes=sent)

    def _restore(self) -> None:
        started = time.monotonic()
        data, fd = self.fetch_state()
        with restoring(fd):
            doc = handover.decode(data)
            if doc["daemon"].get("mode") != "singleton":
                raise StateError('Upgrade(Restore("the state is a fuse daemon\'s, this is a singleton"))')
            self.service.threads = doc["daemon"]["threads"]
            self.service.restore(fd, doc["fscache"]["blob_entries"])
            self.runtime_config.restore(doc["runtime_config"])
        log.event(
            "takeover",
            mode="singleton",
            entries=len(doc["fscache"]["blob_entries"]),
            from_pid=doc["daemon"].get("writer_pid"),
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    # --- API actions ----------------------------------------------------------------------

    def blob_add(self, doc: Dict[str, Any]) -> None:
        ids = self.service.add_entry(doc)
        log.event("blob_added", id=doc.get("id"), domain=doc.get("domain_id", ""), data_blobs=len(ids))
        self.push_state_quietly()

    def blob_remove(self, domain: str, blob_id: str) -> None:
        if blob_id:
            self.service.remove_entry(domain, blob_id)
        else:
            self.service.remove_domain(domain)
        log.event("blob_removed", domain=domain, id=blob_id)
        self.push_state_quietly()

    def blob_entries(self, domain: str, blob_id: str) -> List[Dict[str, Any]]:
        return self.service.entries(domain, blob_id)

    def blob_cull(self, blob_id: str) -> None:
        self.service.cull(blob_id)

    def backend_meta(self, mountpoint: Optional[str]) -> Dict[str, Any]:
        raise Unsupported('Unsupported("a singleton daemon has no RAFS mountpoints")')

    def prometheus(self) -> str:
        m = self.service.metrics() if self.service.server is not None else {}
        lines = ["# TYPE nydus_fscache_total counter"]
        for k in ("opens", "open_errors", "reads", "read_bytes", "read_errors", "closes", "bad_messages"):
            lines.append(f'nydus_fscache_total{{counter="{k}"}} {m.get(k, 0)}')
        return "\n".join(lines) + "\n"

    def _shutdown(self) -> None:
        if self.machine.state == st.RUNNING:
            self.machine.fire("stop", self.service.stop_workers)
        if self.machine.state in (st.READY, st.INIT):
            self.machine.fire("stop")
        log.event("exit", mode="singleton")


def run(a: argparse.Namespace) -> int:
    """``nydusd singleton``: bind the device (or wait for a takeover) and serve the API."""
    d = SingletonDaemon(a)
    try:
        # An upgrade's predecessor still holds the device: do not even try to open it.
        bound = not (a.upgrade and a.apisock) and d.try_bind()
        if a.apisock and (a.upgrade or not bound):
            log.event("waiting_for_takeover", upgrade=a.upgrade, crashed=not bound)
        else:
            d.normal_start()
    except (AnotherDaemon, DaemonError, NydusError, OSError, ValueError) as e:
        print(f"nydusd: error: {getattr(e, 'message', None) or e}", file=sys.stderr)
        return 1
    rc = d.run()
    logging.shutdown()
    return rc
