"""One daemon as the manager sees it (spec A5.1, A6, A7.2): its persisted record, the command
line that starts it, the API client with the snapshotter's waiting budgets, and the
operations on it (start, wait for a state, shared mount and umount, state push to the
supervisor, takeover, terminate, clear vestige)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from nydus_hybrid.lifecycle import failover, upgrade
from nydus_hybrid.lifecycle.supervisor import Supervisor
from nydus_hybrid.manager.client import SOCKET_ATTEMPTS, STATE_ATTEMPTS, UNKNOWN, NydusdClient, NydusdUnreachable
from nydus_hybrid.manager.drivers.base import FsDriver
from nydus_hybrid.manager.errors import DaemonStartError, ManagerError
from nydus_hybrid.mounts.mountinfo import is_mountpoint, mountpoint_path

SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1


@dataclass
class DaemonRecord:
    """What the store keeps for a daemon (nydus-snapshotter's ConfigState)."""

    id: str
    daemon_mode: str  # "shared" or "dedicated"
    fs_driver: str  # a name in manager.drivers.NAMES
    api_socket: str
    mountpoint: str
    config_dir: str
    log_dir: str
    log_level: str = "info"
    log_rotation_size: int = 0
    thread_num: int = 4
    failover_policy: str = "resend"
    supervisor_path: str = ""
    bootstrap: str = ""  # dedicated: the image it serves
    config_path: str = ""  # dedicated: its config file
    driver_options: Dict[str, Any] = field(default_factory=dict)  # what only its fs driver needs
    pid: int = 0
    standby_pid: int = 0  # a warm successor waiting in INIT (--failover-standby)
    standby_socket: str = ""

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> DaemonRecord:
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in d.items() if k in known}
        # Records written before driver_options kept the fscache fields at the top level.
        legacy = {k: d[k] for k in ("fscache_dir", "fscache_threads") if d.get(k)}
        if legacy and "driver_options" not in d:
            fields["driver_options"] = legacy
        return cls(**fields)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def nydusd_argv(nydusd: Sequence[str], r: DaemonRecord, driver: FsDriver, upgrade_flag: bool = False) -> List[str]:
    """The daemon's command line, in the snapshotter's fixed order (spec A6.1)."""
    head, middle, tail = driver.daemon_argv(r)
    argv = list(nydusd) + head
    if upgrade_flag:
        argv.append("--upgrade")
    argv += middle
    if r.supervisor_path:
        argv += ["--id", r.id]
    if r.config_path:
        argv += ["--config", r.config_path]
    if r.bootstrap:
        argv += ["--bootstrap", r.bootstrap]
    if r.mountpoint:
        argv += ["--mountpoint", r.mountpoint]
    argv += ["--apisock", r.api_socket, "--log-level", r.log_level]
    if r.log_rotation_size > 0:
        argv += ["--log-rotation-size", str(r.log_rotation_size)]
    if r.supervisor_path:
        argv += ["--supervisor", r.supervisor_path]
    argv += ["--log-file", os.path.join(r.log_dir, "nydusd.log")]
    return argv + tail


class Daemon:
    def __init__(self, record: DaemonRecord, nydusd: List[str], driver: FsDriver):
        self.record = record
        self.nydusd = nydusd
        self.driver = driver
        self.refs = 0
        self.state = UNKNOWN  # the last state seen
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.supervisor: Optional[Supervisor] = None
        self.standby: Optional[failover.Standby] = None
        self._client: Optional[NydusdClient] = None

    @property
    def id(self) -> str:
        return self.record.id

    def argv(self, upgrade_flag: bool = False) -> List[str]:
        return nydusd_argv(self.nydusd, self.record, self.driver, upgrade_flag)

    def check_paths(self) -> None:
        for what, path in (("API socket", self.record.api_socket), ("supervisor socket", self.record.supervisor_path)):
            if len(os.fsencode(path)) > SUN_PATH_MAX:
                raise DaemonStartError(
                    f"daemon {self.id}: {what} path is too long ({len(os.fsencode(path))} bytes, "
                    f"the limit is {SUN_PATH_MAX}): {path}"
                )

    # --- process --------------------------------------------------------------------------

    def spawn(self, upgrade_flag: bool = False) -> int:
        """Start the process (its own session: it outlives the manager); returns its pid."""
        self.check_paths()
        for d in (
            self.record.log_dir,
            self.record.config_dir,
            os.path.dirname(self.record.api_socket),
            self.record.mountpoint,
            *self.driver.daemon_dirs(self.record),
        ):
            if d:
                os.makedirs(d, exist_ok=True)
        argv = self.argv(upgrade_flag)
        exe = argv[0]
        if (os.sep in exe and not os.access(exe, os.X_OK)) or (os.sep not in exe and not _which(exe)):
            raise DaemonStartError(f"daemon {self.id}: cannot run {exe!r}: no such executable")
        err = open(os.path.join(self.record.log_dir, "stderr.log"), "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        except OSError as e:
            raise DaemonStartError(f"daemon {self.id}: cannot run {exe!r}: {e.strerror or e}") from e
        finally:
            err.close()
        self.record.pid = self.proc.pid
        self.reset_client()
        return self.proc.pid

    def alive(self) -> bool:
        pid = self.record.pid
        if pid <= 0:
            return False
        if self.proc is not None and self.proc.pid == pid:
            return self.proc.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _is_zombie(pid)

    def reap(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def terminate(self, timeout: float = 10.0) -> None:
        """SIGTERM (the daemon unmounts and exits), then wait; SIGKILL if it hangs."""
        if not self.alive():
            return
        os.kill(self.record.pid, signal.SIGTERM)
        if not self.wait(timeout):
            os.kill(self.record.pid, signal.SIGKILL)
            self.wait(5)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.pid == self.record.pid:
                try:
                    self.proc.wait(max(0.01, deadline - time.monotonic()))
                    return True
                except subprocess.TimeoutExpired:
                    return False
            if not self.alive():
                return True
            time.sleep(0.02)
        return False

    def clear_vestige(self, instances: Sequence[Dict[str, Any]] = ()) -> None:
        """Before restarting a dead daemon: detach its dead mounts (the FUSE mountpoint, or
        each instance's EROFS mount for fscache) and remove its stale sockets (a stale socket
        next to a live mount means "take over", spec §3.4)."""
        for mp in map(mountpoint_path, self.driver.vestige_mounts(self.record, instances)):
            if is_mountpoint(mp):
                subprocess.run(["umount", "-l", mp], capture_output=True)
        sock_dir = os.path.dirname(self.record.api_socket)
        for name in os.listdir(sock_dir) if os.path.isdir(sock_dir) else []:
            if name.endswith(".sock"):  # api.sock and the apiN.sock of upgrades
                os.unlink(os.path.join(sock_dir, name))
        self.reset_client()

    # --- API (through NydusdClient) -----------------------------------------------------

    def reset_client(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def client(self) -> NydusdClient:
        if self._client is None:
            self._client = NydusdClient(self.record.api_socket, alive=self._process_alive)
        return self._client

    def _process_alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def wait_socket(self, attempts: int = SOCKET_ATTEMPTS) -> None:
        try:
            self.client().wait_socket(attempts)
        except NydusdUnreachable as e:
            raise DaemonStartError(f"daemon {self.id}: {e}; see {self.record.log_dir}") from e

    def get_state(self) -> str:
        self.state = self.client().get_state()
        return self.state

    def info(self) -> Optional[Dict[str, Any]]:
        try:
            return self.client().get_daemon_info()
        except ManagerError:
            return None

    def wait_until_state(self, want: str, attempts: int = STATE_ATTEMPTS) -> None:
        try:
            self.state = self.client().wait_until_state(want, attempts)
        except NydusdUnreachable as e:
            raise DaemonStartError(f"daemon {self.id}: {e}") from e

    def shared_mount(self, rafs: Dict[str, Any]) -> None:
        """Attach one instance, the way its fs driver does (an API mount at /<key> for
        fusedev; bind the bootstrap blob, then mount EROFS over fscache for fscache)."""
        self.driver.mount(self, rafs)

    def shared_umount(self, rafs: Dict[str, Any]) -> None:
        self.driver.umount(self, rafs)

    def mounted_keys(self, instances: Sequence[Dict[str, Any]]) -> List[str]:
        """The instance keys the daemon serves now (``instances``: the ones recorded for it)."""
        return self.driver.mounted_keys(self, instances)

    def recover_rafs_instances(
        self, instances: Sequence[Dict[str, Any]]
    ) -> List[Tuple[Dict[str, Any], Optional[ManagerError]]]:
        """Re-attach instances after a restart, in seq order (the order they were first
        mounted); one failure does not stop the rest. Returns (instance, error or None)."""
        results: List[Tuple[Dict[str, Any], Optional[ManagerError]]] = []
        for rafs in sorted(instances, key=lambda r: r["seq"]):
            try:
                self.shared_mount(rafs)
                results.append((rafs, None))
            except ManagerError as e:
                results.append((rafs, e))
            except OSError as e:
                results.append((rafs, ManagerError(f"instance {rafs['snapshot_id']}: {e}")))
        return results

    def send_states(self) -> None:
        """Have the daemon push its state and fd to our supervisor (spec §4.6 A.4)."""
        if self.supervisor is None:
            return
        gen = self.supervisor.generation
        self.client().send_fd()
        if not self.supervisor.wait_for_state(gen):
            raise ManagerError(f"daemon {self.id}: the supervisor received no state")

    def take_over(self) -> None:
        self.client().take_over()

    def start(self) -> None:
        """PUT /api/v1/daemon/start (READY -> RUNNING); the process is started by `spawn`."""
        self.client().start()

    def exit(self) -> None:
        self.client().exit()

    # --- hot upgrade ----------------------------------------------------------------------

    def hot_upgrade(self, nydusd: Optional[List[str]] = None) -> None:
        """Sequence B through our supervisor; the record then names the new socket and pid."""
        if self.supervisor is None:
            raise ManagerError(f"daemon {self.id} has no supervisor (recover policy is not failover)")
        if nydusd:
            self.nydusd = list(nydusd)
        new_sock = upgrade.next_apisock(self.record.api_socket)
        new = DaemonRecord.from_dict(dict(self.record.to_dict(), api_socket=new_sock))
        self.check_paths()
        r = upgrade.hot_upgrade(
            self.record.api_socket,
            self.supervisor,
            nydusd_argv(self.nydusd, new, self.driver, True),
            new_sock,
            log_path=os.path.join(self.record.log_dir, "stderr.log"),
        )
        self.record.api_socket = new_sock
        self.record.pid = r.process.pid
        self.proc = r.process
        self.reset_client()

    def describe(self) -> Dict[str, Any]:
        d = self.record.to_dict()
        d.update(refs=self.refs, state=self.state)
        return d


def _which(exe: str) -> bool:
    return any(os.access(os.path.join(p, exe), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
