"""What both daemons share (spec §2-4): the state machine, the event ring, the hot-reload
config, the supervisor handover steps and the API event loop. ``fusedev.FuseDaemon`` and
``singleton.SingletonDaemon`` fill in what differs: the service they drive, the state they
hand over and how they start."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

from nydus_hybrid import blobs, log, version
from nydus_hybrid.daemon import state as st
from nydus_hybrid.daemon.errors import BadRequest, DaemonError
from nydus_hybrid.daemon.service import Service
from nydus_hybrid.lifecycle import handover, supervisor
from nydus_hybrid.lifecycle.errors import StateError, SupervisorError

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}
RUNTIME_KEYS = ("registry_auth", "proxy_url", "dragonfly_scheduler_endpoint")


class Events:
    """The error ring buffer of `/daemon/events` (spec §8.6)."""

    MAX_ERRORS, MAX_SIZE = 500, 51200

    def __init__(self) -> None:
        self.errors: List[str] = []
        self.total_errors = 0
        self.lock = threading.Lock()

    def add(self, message: str) -> None:
        # RFC 1123 time, as nydusd prints it (email.utils would cost the start-up ~8 ms)
        line = f"{time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())} - {message}"
        with self.lock:
            self.total_errors += 1
            self.errors.append(line)
            while len(self.errors) > self.MAX_ERRORS or sum(map(len, self.errors)) > self.MAX_SIZE:
                self.errors.pop(0)

    def to_json(self) -> Dict[str, Any]:
        with self.lock:
            return {
                "max_errors": self.MAX_ERRORS,
                "total_errors": self.total_errors,
                "max_size": self.MAX_SIZE,
                "total_size": sum(map(len, self.errors)),
                "errors": list(self.errors),
            }


class RuntimeConfig:
    """The hot-reload map of `/api/v1/config` (spec §2.6), keyed `<id>:<key>`. Registry
    credentials reach the Rust backends at once."""

    def __init__(self) -> None:
        self.values: Dict[str, str] = {}

    def put(self, id_: str, doc: Dict[str, Any]) -> None:
        # nydusd parses the body as a string -> string map before it looks at the keys
        if not all(isinstance(v, str) for v in doc.values()):
            raise BadRequest('ParseBody(Error("values must be strings"))')
        bad = [k for k in doc if k not in RUNTIME_KEYS]
        if bad:
            raise DaemonError(
                f"Configure(ResponsePayloadType) unknown key {bad[0]!r}; allowed: {', '.join(RUNTIME_KEYS)}"
            )
        for key, value in doc.items():
            self.values[f"{id_}:{key}"] = value
            if key == "registry_auth":
                blobs.set_registry_auth(id_, value)

    def restore(self, values: Dict[str, str]) -> None:
        """Adopt a predecessor's values (takeover); credentials reach the backends again."""
        for key, value in values.items():
            id_, _, name = key.rpartition(":")
            self.put(id_, {name: value})

    def get(self, id_: Optional[str]) -> Dict[str, str]:
        if id_ is None:
            return dict(self.values)
        prefix = f"{id_}:"
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}


@contextmanager
def restoring(fd: int) -> Iterator[None]:
    """A takeover's restore: any failure in it is a DaemonError (a corrupt state must never
    take the daemon down), and the received fd is closed either way."""
    try:
        yield
    except DaemonError:
        raise
    except StateError as e:
        raise DaemonError(e.message) from e
    except Exception as e:
        raise DaemonError(f"Upgrade(Restore({str(e)!r}))") from e
    finally:
        os.close(fd)


def stale_socket(apisock: Optional[str]) -> bool:
    """The API socket file is there but nobody accepts on it: its daemon died."""
    if not apisock or not os.path.exists(apisock):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(apisock)
        return False
    except OSError:
        return True
    finally:
        s.close()


class BaseDaemon:
    """One daemon process: ``a`` is its parsed command line (``daemon.args``)."""

    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.events = Events()
        self.runtime_config = RuntimeConfig()
        self.machine = st.StateMachine(st.INIT, on_change=self._changed)
        self.service: Service = self.make_service()
        self.stopping = threading.Event()
        self.unmount_on_exit = True

    # --- what each daemon defines ---------------------------------------------------------

    def make_service(self) -> Service:
        raise NotImplementedError

    def normal_start(self) -> None:
        """Serve what the command line names and reach RUNNING (before the API socket exists)."""
        raise NotImplementedError

    def state_doc(self) -> Dict[str, Any]:
        """The handover state's payload (``lifecycle.handover``)."""
        raise NotImplementedError

    def _restore(self) -> None:
        """The takeover itself: fetch the state and fd, rebuild every instance."""
        raise NotImplementedError

    def _push_when_initialized(self) -> None:
        self.push_state_quietly()

    def _shutdown(self) -> None:
        raise NotImplementedError

    def backend_meta(self, mountpoint: Optional[str]) -> Dict[str, Any]:
        raise NotImplementedError

    def prometheus(self) -> str:
        raise NotImplementedError

    def blob_add(self, doc: Dict[str, Any]) -> None:
        raise NotImplementedError

    def blob_remove(self, domain: str, blob_id: str) -> None:
        raise NotImplementedError

    def blob_entries(self, domain: str, blob_id: str) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def blob_cull(self, blob_id: str) -> None:
        raise NotImplementedError

    def mounts_changed(self) -> None:
        """After a mount or umount through the API."""

    # --- shared ---------------------------------------------------------------------------

    def _changed(self, event: str, before: str, after: str) -> None:
        log.event("state", input=event, before=before, after=after)

    def push_state(self, fd: int) -> int:
        """Hand our state and ``fd`` to the supervisor; returns the bytes sent."""
        data = handover.encode(self.state_doc())
        try:
            supervisor.push_state(self.a.supervisor, data, fd)
        except SupervisorError as e:
            raise DaemonError(f"Upgrade(SendFd({str(e)!r}))") from e
        return len(data)

    def sendfd(self) -> None:
        """PUT /daemon/fuse/sendfd."""
        raise NotImplementedError

    def push_state_quietly(self) -> None:
        """After start or a mount change: refresh the supervisor's copy, if the supervisor
        takes pushes (a one-shot supervisor must see only the sendfd it asked for)."""
        if not self.a.supervisor or not supervisor.takes_pushes():
            return
        try:
            self.sendfd()
        except DaemonError as e:
            log.event("state_push_skipped", level=logging.DEBUG, reason=e.message)

    def takeover(self) -> None:
        """PUT /daemon/fuse/takeover: INIT -> READY once every instance is back."""
        self.machine.fire("takeover", self._restore)  # the state is checked first, as nydusd does

    def fetch_state(self) -> Tuple[bytes, int]:
        """(state bytes, fd) from our supervisor, for a takeover."""
        if not self.a.supervisor:
            raise DaemonError("Upgrade(MissingSupervisorPath): takeover needs --supervisor")
        try:
            return supervisor.fetch_state(self.a.supervisor)
        except SupervisorError as e:
            raise DaemonError(f"Upgrade(Restore({str(e)!r}))") from e

    def info(self, backends: bool) -> Dict[str, Any]:
        return {
            "version": version.build_info(),
            "id": self.a.id,
            "supervisor": self.a.supervisor,
            "state": self.machine.state,
            "backend_collection": self.service.backend_collection() if backends else None,
        }

    def set_log_level(self, level: str) -> None:
        name = level.lower()
        if name not in LEVELS:
            raise DaemonError(f'Logger("unknown log level {level!r}")')
        logging.getLogger(log.LOGGER_NAME).setLevel(LEVELS[name])
        # not `level=`: that is log.event's own parameter (the record's level)
        log.event("log_level", log_level=name)

    def start(self) -> None:
        self.machine.fire("start", self.service.start_workers)
        self._push_when_initialized()

    def exit(self) -> None:
        """Stop serving and exit without unmounting (hot upgrade keeps the mount)."""
        state = self.machine.state
        if state == st.RUNNING:
            self.machine.fire("stop", self.service.stop_workers)
            self.machine.fire("exit")
        elif state == st.READY:
            self.machine.fire("exit")
        elif state == st.INIT:
            self.machine.fire("stop")
        self.unmount_on_exit = False
        self._shutdown_soon()

    def _shutdown_soon(self) -> None:
        # Let the 204 go out first, then end the main loop.
        threading.Timer(0.05, self.stopping.set).start()

    def run(self) -> int:
        """Serve the API until SIGTERM, SIGINT or ``PUT /daemon/exit``, then shut down."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        # The API comes up behind the mount (an HTTP stack is a fifth of the start-up):
        # its module loads here, after a normal start has already mounted and served.
        from nydus_hybrid.daemon.api import Api, serve

        server = None
        if self.a.apisock:
            if os.path.lexists(self.a.apisock):
                os.unlink(self.a.apisock)
            server = serve(Api(self), self.a.apisock)
            os.chmod(self.a.apisock, 0o600)
        log.event("api_ready", apisock=self.a.apisock, state=self.machine.state)
        while not self.stopping.wait(1.0):  # a timed wait: signal handlers run in between
            pass
        self._shutdown()
        if server is not None:
            server.close()
        return 0
