"""``NydusdClient``: every control-plane call nydus-snapshotter makes to a daemon (spec A6.2),
with its budgets: 30 s per request, a 100 x 100 ms wait for the socket before the first
request (aborted when the process is gone), and ``wait_until_state`` polling every 100 ms,
20 attempts (both scaled by ``nydus_hybrid.waits``). A transport failure drops the
connection, so the next call redials: the client survives a daemon restart on the same
socket path.

Errors are ``NydusdApiError`` (the daemon answered 4xx/5xx; ``status`` and ``message`` from
its JSON body) or ``NydusdUnreachable`` (no socket, refused, reset, timed out)."""

from __future__ import annotations

import http.client
import os
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional

from nydus_hybrid import waits
from nydus_hybrid.client import DaemonApiError, DaemonClient
from nydus_hybrid.manager.errors import ManagerError

REQUEST_TIMEOUT_S = 30.0
SOCKET_ATTEMPTS, STATE_ATTEMPTS, POLL_S = int(waits.scaled(100)), int(waits.scaled(20)), 0.1
DIED, UNKNOWN = "DIED", "UNKNOWN"


class NydusdApiError(ManagerError):
    def __init__(self, what: str, status: int, message: str):
        super().__init__(f"{what}: {message} (HTTP {status})")
        self.status, self.message = status, message


class NydusdUnreachable(ManagerError):
    pass


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class NydusdClient:
    def __init__(self, api_socket: str, alive: Optional[Callable[[], bool]] = None, timeout: float = REQUEST_TIMEOUT_S):
        self.api_socket, self.timeout = api_socket, timeout
        self._alive = alive or (lambda: True)
        self._conn: Optional[DaemonClient] = None

    # --- transport ------------------------------------------------------------------------

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def wait_socket(self, attempts: int = SOCKET_ATTEMPTS) -> None:
        for _ in range(attempts):
            if os.path.exists(self.api_socket):
                return
            if not self._alive():
                raise NydusdUnreachable(f"{self.api_socket}: the daemon exited before its API socket appeared")
            time.sleep(POLL_S)
        raise NydusdUnreachable(f"{self.api_socket}: no API socket after {attempts * POLL_S:.0f}s")

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        if self._conn is None:
            self._conn = DaemonClient(self.api_socket, timeout=self.timeout)
        try:
            return self._conn.request(method, path, body)
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.close()
            raise NydusdUnreachable(f"{method} {path} on {self.api_socket}: {e}") from e
        except DaemonApiError as e:
            raise NydusdApiError(f"{method} {path}", e.status, e.message) from e

    # --- daemon ---------------------------------------------------------------------------

    def get_daemon_info(self) -> Dict[str, Any]:
        info: Dict[str, Any] = self.request("GET", "/api/v1/daemon")
        return info

    def get_state(self) -> str:
        """The daemon's state, or DIED when it cannot be asked."""
        try:
            state: str = self.get_daemon_info()["state"]
            return state
        except (ManagerError, KeyError, TypeError):
            return DIED

    def wait_until_state(self, want: str, attempts: int = STATE_ATTEMPTS) -> str:
        state = UNKNOWN
        for _ in range(attempts):
            state = self.get_state()
            if state == want:
                return state
            if not self._alive():
                raise NydusdUnreachable(f"{self.api_socket}: the daemon exited before reaching {want}")
            time.sleep(POLL_S)
        raise NydusdUnreachable(f"{self.api_socket}: the daemon is {state}, not {want}, after {attempts * POLL_S:.0f}s")

    def take_over(self) -> None:
        self.request("PUT", "/api/v1/daemon/fuse/takeover")

    def send_fd(self) -> None:
        self.request("PUT", "/api/v1/daemon/fuse/sendfd")

    def start(self) -> None:
        self.request("PUT", "/api/v1/daemon/start")

    def exit(self) -> None:
        self.request("PUT", "/api/v1/daemon/exit")

    # --- fusedev instances ----------------------------------------------------------------

    def mount(self, mountpoint: str, bootstrap: str, config_text: str) -> None:
        body = {"fs_type": "rafs", "source": bootstrap, "config": config_text}
        self.request("POST", f"/api/v1/mount?mountpoint={_q(mountpoint)}", body)

    def umount(self, mountpoint: str) -> None:
        self.request("DELETE", f"/api/v1/mount?mountpoint={_q(mountpoint)}")

    def mountpoints(self) -> List[str]:
        return list(self.get_daemon_info().get("backend_collection") or {})

    # --- fscache blobs --------------------------------------------------------------------

    def bind_blob(self, entry: Dict[str, Any]) -> None:
        self.request("PUT", "/api/v2/blobs", entry)

    def unbind_blob(self, domain_id: str = "", blob_id: str = "") -> None:
        query = "&".join(f"{k}={_q(v)}" for k, v in (("domain_id", domain_id), ("blob_id", blob_id)) if v)
        self.request("DELETE", f"/api/v2/blobs?{query}")

    def blob_entries(self, domain_id: str = "") -> List[Dict[str, Any]]:
        """Registered bootstrap entries of a domain; every entry for "" (our extension)."""
        entries: List[Dict[str, Any]] = self.request("GET", f"/api/v2/blobs?domain_id={_q(domain_id)}") or []
        return entries

    # --- metrics and config ---------------------------------------------------------------

    def fs_metrics(self, instance: str = "") -> Dict[str, Any]:
        metrics: Dict[str, Any] = self.request("GET", "/api/v1/metrics" + (f"?id={_q(instance)}" if instance else ""))
        return metrics

    def cache_metrics(self, instance: str = "") -> Dict[str, Any]:
        metrics: Dict[str, Any] = self.request(
            "GET", "/api/v1/metrics/blobcache" + (f"?id={_q(instance)}" if instance else "")
        )
        return metrics

    def inflight_metrics(self) -> List[Dict[str, Any]]:
        inflight: List[Dict[str, Any]] = self.request("GET", "/api/v1/metrics/inflight") or []
        return inflight

    def update_auth(self, instance: str, registry_auth: str) -> None:
        self.request("PUT", f"/api/v1/config?id={_q(instance)}", {"registry_auth": registry_auth})
