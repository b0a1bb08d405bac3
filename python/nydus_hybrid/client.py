"""A small client for the daemon's HTTP API on its unix socket (what nydus-snapshotter and
nydusctl speak): one keep-alive connection, JSON in and out, errors as ``DaemonApiError``."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any, Dict, Optional


class DaemonApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("unix", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class DaemonClient:
    def __init__(self, apisock: str, timeout: float = 30.0):
        self.conn = _UnixConnection(apisock, timeout)

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        self.conn.request(
            method, path, body=data, headers={"Content-Length": str(len(data)), "Content-Type": "application/json"}
        )
        resp = self.conn.getresponse()
        raw = resp.read()
        doc = (
            json.loads(raw)
            if raw and resp.getheader("Content-Type", "").startswith("application/json")
            else raw.decode()
        )
        if resp.status >= 400:
            raise DaemonApiError(resp.status, doc.get("message", "") if isinstance(doc, dict) else str(doc))
        return doc if resp.status != 204 else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def put(self, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        return self.request("PUT", path, body)

    def wait_state(self, want: str, timeout: float = 30.0) -> Dict[str, Any]:
        """Poll GET /api/v1/daemon until it reports `want` (the socket may not exist yet)."""
        deadline = time.monotonic() + timeout
        last: Exception = TimeoutError(f"daemon did not reach {want}")
        # Short first pauses: a successor reaches INIT or READY within ms of its socket, and
        # a fixed 50 ms poll added up to 50 ms to every failover (bimodal 115 / 170 ms).
        pause = 0.002
        while time.monotonic() < deadline:
            try:
                info: Dict[str, Any] = self.get("/api/v1/daemon")
                if info["state"] == want:
                    return info
            except (OSError, http.client.HTTPException, DaemonApiError) as e:
                last = e
                self.conn.close()
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        raise TimeoutError(f"daemon did not reach {want}: {last}")

    def close(self) -> None:
        self.conn.close()
