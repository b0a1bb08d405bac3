"""Liveness of daemons through an idle connection to each API socket (spec A7.3): the daemon
never closes an idle connection, so EOF or an error on it means the process is gone."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from typing import Callable, Dict, List, Tuple, cast

from nydus_hybrid.manager.errors import ManagerError


class LivenessMonitor:
    def __init__(self, on_death: Callable[[str, str], None]):
        self._on_death = on_death
        self._sel = selectors.DefaultSelector()
        self._subs: Dict[str, Tuple[socket.socket, str]] = {}
        self._lock = threading.Lock()
        # a socketpair wakes the loop when subscriptions change or on close
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)
        self._thread.start()

    def subscribe(self, daemon_id: str, sock_path: str, attempts: int = 20) -> None:
        with self._lock:
            if daemon_id in self._subs:
                raise ManagerError(f"daemon {daemon_id} is already watched")
        last: Exception = OSError("no attempt")
        for _ in range(attempts):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(sock_path)
                break
            except OSError as e:
                s.close()
                last = e
                time.sleep(0.1)
        else:
            raise ManagerError(f"cannot watch daemon {daemon_id}: {sock_path}: {last}")
        s.setblocking(False)
        with self._lock:
            self._subs[daemon_id] = (s, sock_path)
            self._sel.register(s, selectors.EVENT_READ, daemon_id)
        self._wake_w.send(b"x")

    def unsubscribe(self, daemon_id: str) -> None:
        with self._lock:
            sub = self._subs.pop(daemon_id, None)
            if sub is not None:
                self._sel.unregister(sub[0])
                sub[0].close()

    def watched(self) -> List[str]:
        with self._lock:
            return sorted(self._subs)

    def close(self) -> None:
        self._closed = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for d in list(self._subs):
            self.unsubscribe(d)
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        while not self._closed:
            for key, _ in self._sel.select(timeout=1.0):
                if key.data is None:
                    try:
                        self._wake_r.recv(64)
                    except BlockingIOError:
                        pass
                    continue
                daemon_id: str = key.data
                # Every key with data is a daemon's socket, registered in subscribe().
                conn = cast(socket.socket, key.fileobj)
                try:
                    data = conn.recv(1)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    continue  # the daemon never writes unasked; ignore stray bytes
                with self._lock:
                    sub = self._subs.pop(daemon_id, None)
                    if sub is not None:
                        self._sel.unregister(sub[0])
                        sub[0].close()
                if sub is not None:
                    threading.Thread(
                        target=self._on_death, args=(daemon_id, sub[1]), name=f"death:{daemon_id}", daemon=True
                    ).start()
