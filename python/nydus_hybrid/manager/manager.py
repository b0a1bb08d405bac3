"""The daemon manager (spec A7, A8.1/A8.3, A10): starts and stops daemons in shared or
dedicated mode, mounts RAFS instances on them, keeps both in SQLite, watches each daemon
through an idle API connection and applies the recover policy when one dies, and rebuilds
everything from the store when the manager itself restarts.

Crash safety: every change is written to the store before memory, and an instance moves
through ``mounting`` -> ``mounted`` -> ``removing`` in the store around the daemon call, so
a manager killed at any point can finish or undo what it was doing on restart. Nothing the
store cannot explain is deleted; it is listed in ``unexplained`` instead."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import sys
import threading
from typing import Any, Dict, List, Optional, Set, Union

from nydus_hybrid import log
from nydus_hybrid.lifecycle import failover as nfailover
from nydus_hybrid.lifecycle import upgrade as nupgrade
from nydus_hybrid.lifecycle.errors import SupervisorError, UpgradeError
from nydus_hybrid.lifecycle.supervisor import PUSH_ENV, Supervisor
from nydus_hybrid.manager import drivers
from nydus_hybrid.manager.client import DIED
from nydus_hybrid.manager.daemon import Daemon, DaemonRecord
from nydus_hybrid.manager.errors import DaemonStartError, ManagerError
from nydus_hybrid.manager.monitor import LivenessMonitor
from nydus_hybrid.manager.store import Store

MODES = ("shared", "dedicated")
FS_DRIVERS = drivers.NAMES
POLICIES = ("none", "restart", "failover")
MOUNTING, MOUNTED, REMOVING = "mounting", "mounted", "removing"


def default_nydusd() -> List[str]:
    return [sys.executable, "-m", "nydus_hybrid.daemon"]


def _runs_with(pid: int, arg: str) -> bool:
    """Whether process ``pid`` runs with ``arg`` on its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.fsencode(arg) in f.read().split(b"\0")
    except OSError:
        return False


AUTH_KEYS = ("auth", "registry_token")


def registry_section(cfg: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The registry backend's settings in an instance config (a v1 or v2 nydusd document,
    or an fscache BlobCacheEntry), or None when its backend is not a registry."""
    if isinstance(cfg.get("config"), dict) and "backend_type" in cfg["config"]:  # BlobCacheEntry
        entry = cfg["config"]
        found = entry.get("backend_config") if entry["backend_type"] == "registry" else None
    elif isinstance(cfg.get("device"), dict):  # v1
        backend = cfg["device"].get("backend") or {}
        found = backend.get("config") if backend.get("type") == "registry" else None
    else:  # v2
        backend = cfg.get("backend") or {}
        found = backend.get("registry") if backend.get("type") == "registry" else None
    return found if isinstance(found, dict) else None


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Manager:
    def __init__(
        self,
        root: str,
        *,
        daemon_mode: str = "shared",
        recover_policy: str = "failover",
        nydusd: Optional[List[str]] = None,
        thread_num: int = 4,
        log_level: str = "info",
        failover_policy: str = "resend",
        fs_driver: str = "fusedev",
        fscache_domain: str = "",
        standby: bool = False,
    ):
        self.root = os.path.abspath(root)
        self.driver = drivers.get(fs_driver, self.root, {"domain": fscache_domain} if fscache_domain else None)
        if self.driver.shared_only:
            daemon_mode = "shared"
        if daemon_mode not in MODES:
            raise ManagerError(f"daemon mode {daemon_mode!r}: expected one of {', '.join(MODES)}")
        if recover_policy not in POLICIES:
            raise ManagerError(f"recover policy {recover_policy!r}: expected one of {', '.join(POLICIES)}")
        if recover_policy == "failover":
            # Our supervisors take pushes: a daemon (and each successor) hands its state
            # over on its own once it serves, so a crash right after a start or a mount can
            # already fail over. Inherited by every process we start.
            os.environ[PUSH_ENV] = "1"
        os.makedirs(self.root, exist_ok=True)
        self.store = Store(os.path.join(self.root, "nydus.db"))
        self.daemon_mode = daemon_mode
        self.standby = standby and recover_policy == "failover"
        self.recover_policy = recover_policy
        self.nydusd = list(nydusd or default_nydusd())
        self.thread_num, self.log_level, self.failover_policy = thread_num, log_level, failover_policy
        self.daemons: Dict[str, Daemon] = {}
        self.instances: Dict[str, Dict[str, Any]] = {}
        self.unexplained: List[str] = []
        self.lock = threading.RLock()
        self._busy: Set[str] = set()  # daemons being replaced or destroyed on purpose
        self.monitor = LivenessMonitor(self._on_death)

    # --- daemons --------------------------------------------------------------------------

    def _new_record(self, mode: str, mountpoint: str, bootstrap: str = "") -> DaemonRecord:
        did = secrets.token_hex(10)  # 20 characters, like the snapshotter's xids
        config_dir = os.path.join(self.root, "config", did)
        fuse_mountpoint, options = self.driver.record_fields(mountpoint)
        return DaemonRecord(
            id=did,
            daemon_mode=mode,
            fs_driver=self.driver.name,
            mountpoint=fuse_mountpoint,
            driver_options=options,
            config_dir=config_dir,
            api_socket=os.path.join(self.root, "socket", did, "api.sock"),
            log_dir=os.path.join(self.root, "logs", did),
            log_level=self.log_level,
            thread_num=self.thread_num,
            failover_policy=self.failover_policy,
            supervisor_path=os.path.join(self.root, "supervisor", f"{did}.sock")
            if self.recover_policy == "failover"
            else "",
            bootstrap=bootstrap,
            config_path=os.path.join(config_dir, "config.json") if bootstrap else "",
        )

    def _register(self, record: DaemonRecord) -> Daemon:
        """A new daemon: its socket paths checked first (a refusal writes nothing), then its
        record, then its supervisor."""
        Daemon(record, self.nydusd, self.driver).check_paths()
        self.store.add_daemon(record.to_dict())
        return self._adopt(record)

    def _driver_of(self, record: DaemonRecord) -> drivers.FsDriver:
        """A daemon keeps the driver it was made with, even after a restart with another."""
        if record.fs_driver == self.driver.name:
            return self.driver
        return drivers.get(record.fs_driver, self.root, self.driver.options)

    def _adopt(self, record: DaemonRecord) -> Daemon:
        d = Daemon(record, self.nydusd, self._driver_of(record))
        if record.supervisor_path:
            d.supervisor = Supervisor(record.supervisor_path).start()
        self.daemons[d.id] = d
        return d

    def _start(self, d: Daemon) -> None:
        """Sequence A: spawn, record the pid, wait for the socket, watch it, wait RUNNING,
        collect the state into the supervisor."""
        d.spawn()
        self.store.update_daemon(d.record.to_dict())
        d.wait_socket()
        d.wait_until_state("RUNNING")
        self.monitor.subscribe(d.id, d.record.api_socket)
        self._collect(d)
        self._ensure_standby(d)

    def _collect(self, d: Daemon) -> None:
        try:
            d.send_states()
        except ManagerError as e:
            log.event("state_collect_failed", level=logging.WARNING, daemon=d.id, error=str(e))

    # --- warm standbys (--failover-standby) -----------------------------------------------

    def _ensure_standby(self, d: Daemon) -> None:
        """Keep a successor waiting in INIT next to a failover daemon, so its failover is a
        takeover (tens of ms) instead of a process start-up (~200 ms). Best effort."""
        if not self.standby or d.supervisor is None or (d.standby is not None and d.standby.alive()):
            return
        sock = nupgrade.next_apisock(d.record.api_socket)
        try:
            d.standby = nfailover.spawn_standby(d.argv(), sock, log_path=os.path.join(d.record.log_dir, "stderr.log"))
        except (UpgradeError, OSError) as e:
            log.event("standby_failed", level=logging.WARNING, daemon=d.id, error=str(e))
            return
        d.record.standby_pid, d.record.standby_socket = d.standby.process.pid, sock
        self.store.update_daemon(d.record.to_dict())
        log.event("standby_ready", daemon=d.id, pid=d.record.standby_pid, apisock=sock)

    def _drop_standby(self, d: Daemon) -> None:
        """Stop the standby: ours, or one a previous manager left (checked by its command
        line, so a reused pid is never killed)."""
        if d.standby is not None:
            d.standby.stop()
        elif (
            d.record.standby_pid
            and d.record.standby_socket
            and _runs_with(d.record.standby_pid, d.record.standby_socket)
        ):
            os.kill(d.record.standby_pid, signal.SIGKILL)
        if d.record.standby_socket and os.path.exists(d.record.standby_socket):
            os.unlink(d.record.standby_socket)
        d.standby = None
        if d.record.standby_pid or d.record.standby_socket:
            d.record.standby_pid, d.record.standby_socket = 0, ""
            if d.id in self.daemons:
                self.store.update_daemon(d.record.to_dict())

    def _activate_standby(self, d: Daemon) -> None:
        """Sequence C on the standby: take over from the supervisor, start serving."""
        assert d.standby is not None and d.supervisor is not None  # checked by _on_death
        dead_socket = d.record.api_socket
        r = nfailover.failover_to_standby(d.standby, d.supervisor)
        d.proc, d.record.pid, d.record.api_socket = r.process, r.process.pid, r.apisock
        d.standby, d.record.standby_pid, d.record.standby_socket = None, 0, ""
        if os.path.exists(dead_socket):
            os.unlink(dead_socket)
        d.reset_client()
        self.store.update_daemon(d.record.to_dict())
        self.monitor.subscribe(d.id, d.record.api_socket)
        d.state = "RUNNING"
        log.event("daemon_failed_over", daemon=d.id, pid=d.record.pid, ms=round(r.total_ms, 1), standby=True)
        self._ensure_standby(d)

    def shared_daemon(self) -> Daemon:
        with self.lock:
            for d in self.daemons.values():
                if d.record.daemon_mode == "shared":
                    return d
            d = self._register(self._new_record("shared", os.path.join(self.root, "mnt")))
            try:
                self._start(d)
            except ManagerError:
                self._destroy(d)
                raise
            log.event("daemon_started", daemon=d.id, mode="shared", pid=d.record.pid)
            return d

    def _destroy(self, d: Daemon) -> None:
        """Stop a daemon for good: record first, then the process (it unmounts), then files."""
        self._busy.add(d.id)
        try:
            self._drop_standby(d)
            self.store.delete_daemon(d.id)
            self.daemons.pop(d.id, None)
            self.monitor.unsubscribe(d.id)
            d.terminate()
            d.reap()
            if d.supervisor is not None:
                d.supervisor.close()
            d.reset_client()
            for path in (d.record.config_dir, os.path.dirname(d.record.api_socket)):
                shutil.rmtree(path, ignore_errors=True)
        finally:
            self._busy.discard(d.id)

    # --- instances ------------------------------------------------------------------------

    def mount(self, key: str, image_id: str, bootstrap: str, config: Union[str, Dict[str, Any]]) -> Dict[str, Any]:
        """Mount an image as instance ``key`` (a snapshot id); idempotent for a mounted key."""
        if not key or "/" in key or key in (".", ".."):
            raise ManagerError(f"instance key {key!r}: must be one path component")
        config_text = config if isinstance(config, str) else json.dumps(config)
        with self.lock:
            have = self.instances.get(key)
            if have is not None and have["state"] == MOUNTED:
                return have
            if have is not None:
                raise ManagerError(f"instance {key} is {have['state']}")
            if not os.path.isfile(bootstrap):
                raise ManagerError(f"instance {key}: bootstrap {bootstrap} does not exist")
            if self.daemon_mode == "shared":
                self.driver.check_config(key, config, config_text)
                return self._mount_shared(key, image_id, bootstrap, config_text)
            return self._mount_dedicated(key, image_id, bootstrap, config_text)

    def _instance_record(
        self,
        key: str,
        image_id: str,
        d: Daemon,
        mountpoint: str,
        bootstrap: str,
        config_path: str,
        annotations: Optional[Dict[str, str]] = None,
    ) -> Dict[str, Any]:
        return {
            "snapshot_id": key,
            "image_id": image_id,
            "daemon_id": d.id,
            "fs_driver": d.record.fs_driver,
            "snapshot_dir": os.path.join(self.root, "snapshots", key),
            "mountpoint": mountpoint,
            "bootstrap": bootstrap,
            "config_path": config_path,
            "annotations": annotations or {},
            "state": MOUNTING,
        }

    def _mount_shared(self, key: str, image_id: str, bootstrap: str, config_text: str) -> Dict[str, Any]:
        d = self.shared_daemon()
        config_path = os.path.join(d.record.config_dir, key, "config.json")
        plan = d.driver.plan_instance(key, d, bootstrap, config_text)
        _write_atomic(config_path, plan.config_text)
        rec = self.store.add_instance(
            self._instance_record(key, image_id, d, plan.mountpoint, bootstrap, config_path, plan.annotations)
        )
        self.instances[key] = rec
        d.refs += 1
        try:
            d.shared_mount(rec)
        except ManagerError:
            self.store.delete_instance(key)
            self.instances.pop(key, None)
            d.refs -= 1
            raise
        rec = self._set_state(rec, MOUNTED)
        self._collect(d)
        log.event("instance_mounted", key=key, daemon=d.id, mode="shared")
        return rec

    def _mount_dedicated(self, key: str, image_id: str, bootstrap: str, config_text: str) -> Dict[str, Any]:
        snapdir = os.path.join(self.root, "snapshots", key)
        record = self._new_record("dedicated", os.path.join(snapdir, "mnt"), bootstrap)
        d = self._register(record)
        try:
            _write_atomic(record.config_path, config_text)
            rec = self.store.add_instance(
                self._instance_record(key, image_id, d, record.mountpoint, bootstrap, record.config_path)
            )
        except ManagerError:
            self._destroy(d)
            raise
        self.instances[key] = rec
        d.refs += 1
        try:
            self._start(d)
        except (ManagerError, OSError) as e:
            self.store.delete_instance(key)
            self.instances.pop(key, None)
            self._destroy(d)
            # The OSError stays the implicit context of the DaemonStartError, as it always was.
            raise e if isinstance(e, ManagerError) else DaemonStartError(str(e))  # noqa: B904
        rec = self._set_state(rec, MOUNTED)
        log.event("instance_mounted", key=key, daemon=d.id, mode="dedicated", pid=d.record.pid)
        return rec

    def _set_state(self, rec: Dict[str, Any], state: str) -> Dict[str, Any]:
        rec = dict(rec, state=state)
        self.store.update_instance(rec)
        self.instances[rec["snapshot_id"]] = rec
        return rec

    def update_auth(self, key: str, fields: Dict[str, str]) -> bool:
        """Give a mounted instance new registry credentials (spec A6.2 auth update): its
        config file is rewritten (a restarted daemon reads it), and basic credentials
        (`auth`) also reach the running daemon through PUT /api/v1/config; a bearer token
        (`registry_token`) only lands in the file, as nydusd cannot reload one. False when
        nothing changed or the instance reads no registry."""
        with self.lock:
            rec = self.instances.get(key)
            if rec is None or rec["state"] != MOUNTED:
                return False
            with open(rec["config_path"]) as f:
                cfg = json.load(f)
            registry = registry_section(cfg)
            if registry is None or {k: registry.get(k) for k in AUTH_KEYS} == {k: fields.get(k) for k in AUTH_KEYS}:
                return False
            for k in AUTH_KEYS:
                registry.pop(k, None)
            registry.update({k: v for k, v in fields.items() if k in AUTH_KEYS})
            _write_atomic(rec["config_path"], json.dumps(cfg))
            d = self.daemons.get(rec["daemon_id"])
            if "auth" in fields and d is not None:
                d.driver.update_auth(d, rec, fields["auth"])
            log.event("instance_auth_updated", key=key, kind="basic" if "auth" in fields else "token")
            return True

    def umount(self, key: str) -> None:
        with self.lock:
            rec = self.instances.get(key)
            if rec is None:
                raise ManagerError(f"no instance {key}")
            self._umount(self._set_state(rec, REMOVING))

    def _umount(self, rec: Dict[str, Any]) -> None:
        key = rec["snapshot_id"]
        d = self.daemons.get(rec["daemon_id"])
        if d is not None and d.record.daemon_mode == "shared":
            if key in self._mounted_keys(d):
                d.shared_umount(rec)
            self.store.delete_instance(key)
            self.instances.pop(key, None)
            d.refs = max(0, d.refs - 1)  # only once per instance: it was present
            shutil.rmtree(os.path.join(d.record.config_dir, key), ignore_errors=True)
            self._collect(d)
        else:
            if d is not None:
                self._destroy(d)
            self.store.delete_instance(key)
            self.instances.pop(key, None)
        shutil.rmtree(rec["snapshot_dir"], ignore_errors=True)
        log.event("instance_umounted", key=key)

    def _mounted_keys(self, d: Daemon) -> List[str]:
        try:
            return d.mounted_keys(self._instances_of(d))
        except Exception as e:
            log.event("mount_list_failed", level=logging.WARNING, daemon=d.id, error=str(e))
            return [k for k, r in self.instances.items() if r["daemon_id"] == d.id]

    # --- death and recovery ---------------------------------------------------------------

    def _on_death(self, daemon_id: str, sock_path: str) -> None:
        with self.lock:
            d = self.daemons.get(daemon_id)
            if d is None or daemon_id in self._busy:
                return
            d.state = DIED
            log.event("daemon_died", level=logging.WARNING, daemon=daemon_id, policy=self.recover_policy)
            if self.recover_policy == "none":
                return
            d.reap()
            try:
                if self.recover_policy == "failover" and d.supervisor is not None and d.supervisor.state() is not None:
                    if d.standby is not None and d.standby.alive():
                        try:
                            return self._activate_standby(d)
                        except UpgradeError as e:  # then the usual way: a new process
                            log.event("standby_failover_failed", level=logging.WARNING, daemon=d.id, error=str(e))
                            self._drop_standby(d)
                    self._failover(d)
                else:
                    self._restart(d)
            except (ManagerError, UpgradeError, SupervisorError, OSError) as e:
                log.event("recover_failed", level=logging.ERROR, daemon=daemon_id, error=str(e))

    def _failover(self, d: Daemon) -> None:
        """Sequence C: same arguments, take over from the supervisor, start."""
        assert d.supervisor is not None  # checked by _on_death
        r = nfailover.failover(
            d.argv(), d.record.api_socket, d.supervisor, log_path=os.path.join(d.record.log_dir, "stderr.log")
        )
        d.proc, d.record.pid = r.process, r.process.pid
        d.reset_client()
        self.store.update_daemon(d.record.to_dict())
        self.monitor.subscribe(d.id, d.record.api_socket)
        d.state = "RUNNING"
        log.event("daemon_failed_over", daemon=d.id, pid=d.record.pid, ms=round(r.total_ms, 1))
        self._ensure_standby(d)

    def _restart(self, d: Daemon) -> None:
        """Sequence D: clear the vestige, start afresh, re-mount shared instances in seq order."""
        self._drop_standby(d)
        d.clear_vestige(self._instances_of(d))
        self._start(d)
        if d.record.daemon_mode == "shared":
            self._recover_instances(d, self._instances_of(d))
        log.event("daemon_restarted", daemon=d.id, pid=d.record.pid)

    def _recover_instances(self, d: Daemon, recs: List[Dict[str, Any]]) -> None:
        """Finish the umounts that were under way, re-attach the rest in seq order."""
        for rec in [r for r in recs if r["state"] == REMOVING]:
            self._umount(rec)
        for rec, err in d.recover_rafs_instances([r for r in recs if r["state"] != REMOVING]):
            if err is None:
                self._set_state(rec, MOUNTED)
            else:
                log.event("remount_failed", level=logging.ERROR, key=rec["snapshot_id"], error=str(err))

    def _instances_of(self, d: Daemon) -> List[Dict[str, Any]]:
        return [r for r in self.instances.values() if r["daemon_id"] == d.id]

    def recover(self) -> Dict[str, List[str]]:
        """Rebuild from the store after a manager restart (spec A10): reconnect to live daemons,
        restart dead ones, finish or undo half-done instance changes, and report what the
        store cannot explain. Returns a summary."""
        summary: Dict[str, List[str]] = {"live": [], "restarted": [], "finished": [], "unexplained": []}
        with self.lock:
            for raw in self.store.daemons():
                self._adopt(DaemonRecord.from_dict(raw))
            for rec in self.store.instances():
                d = self.daemons.get(rec["daemon_id"])
                if d is None:
                    self.unexplained.append(
                        f"instance {rec['snapshot_id']} names daemon {rec['daemon_id']}, which has no record"
                    )
                    continue
                self.instances[rec["snapshot_id"]] = rec
                d.refs += 1
            for d in list(self.daemons.values()):
                try:
                    self._recover_daemon(d, summary)
                except (ManagerError, OSError, UpgradeError) as e:
                    log.event("recover_failed", level=logging.ERROR, daemon=d.id, error=str(e))
            summary["unexplained"] = list(self.unexplained)
        log.event("recovered", **{k: len(v) for k, v in summary.items()})
        return summary

    def _recover_daemon(self, d: Daemon, summary: Dict[str, List[str]]) -> None:
        mine = sorted(self._instances_of(d), key=lambda r: r["seq"])
        state = d.get_state()
        if state != DIED:
            pid = nupgrade.daemon_pid(d.record.api_socket)
            if pid != d.record.pid:
                d.record.pid = pid
                self.store.update_daemon(d.record.to_dict())
        if state == "READY":
            # A successor that took over but was never started (its manager died between
            # the two calls): it holds the session and the instances, so start it.
            d.start()
            state = d.get_state()
        elif state == "INIT":
            # A successor the previous manager started for a failover, waiting for a state
            # that died with that manager's supervisor: it can never take over. Replace it.
            log.event("orphan_successor_replaced", level=logging.WARNING, daemon=d.id, pid=d.record.pid)
            d.terminate()
            state = DIED
        if d.record.daemon_mode == "dedicated":
            if not mine or all(r["state"] == REMOVING for r in mine):
                for r in mine:
                    self._umount(r)
                if d.id in self.daemons:
                    self._destroy(d)  # ours, and serving nothing: an interrupted create or umount
                summary["finished"].append(d.id)
                return
        if state == "RUNNING":
            self.monitor.subscribe(d.id, d.record.api_socket)
            self._collect(d)
            self._drop_standby(d)  # a previous manager's: not our child, start a fresh one
            self._ensure_standby(d)
            summary["live"].append(d.id)
            if d.record.daemon_mode == "shared":
                present = set(self._mounted_keys(d))
                # Finish umounts, complete mounts the daemon never got; confirm the rest.
                self._recover_instances(
                    d, [r for r in mine if r["state"] == REMOVING or r["snapshot_id"] not in present]
                )
                for rec in mine:
                    if rec["state"] == MOUNTING and rec["snapshot_id"] in present:
                        self._set_state(rec, MOUNTED)
                known = {r["snapshot_id"] for r in mine}
                for extra in sorted(present - known):
                    self.unexplained.append(
                        f"daemon {d.id} serves /{extra}, which the store does not know; left mounted"
                    )
            else:
                for rec in mine:
                    if rec["state"] == MOUNTING:
                        self._set_state(rec, MOUNTED)
            return
        if state != DIED:
            summary["live"].append(d.id)  # reachable but not RUNNING (e.g. waiting for a takeover): left alone
            return
        # Dead: restart regardless of the recover policy (as the snapshotter does at start).
        self._restart(d)
        if d.record.daemon_mode == "dedicated":
            for rec in mine:
                self._set_state(rec, MOUNTED)
        summary["restarted"].append(d.id)

    # --- upgrade and shutdown -------------------------------------------------------------

    def upgrade(self, daemon_id: Optional[str] = None, nydusd: Optional[List[str]] = None) -> List[str]:
        """Hot-upgrade one daemon or all (sequence B); returns the ids upgraded."""
        with self.lock:
            targets = [self.daemons[daemon_id]] if daemon_id else list(self.daemons.values())
            if daemon_id and daemon_id not in self.daemons:
                raise ManagerError(f"no daemon {daemon_id}")
            done = []
            for d in targets:
                self._busy.add(d.id)
                try:
                    self.monitor.unsubscribe(d.id)
                    self._drop_standby(d)  # it runs the old code
                    d.hot_upgrade(nydusd)
                    self.store.update_daemon(d.record.to_dict())
                    self.monitor.subscribe(d.id, d.record.api_socket)
                    d.state = "RUNNING"
                    done.append(d.id)
                    self._ensure_standby(d)
                finally:
                    self._busy.discard(d.id)
                log.event("daemon_upgraded", daemon=d.id, pid=d.record.pid, apisock=d.record.api_socket)
            return done

    def describe(self) -> Dict[str, Any]:
        with self.lock:
            return {
                "daemons": [d.describe() for d in self.daemons.values()],
                "instances": sorted(self.instances.values(), key=lambda r: r["seq"]),
                "unexplained": list(self.unexplained),
            }

    def close(self, stop_daemons: bool = False) -> None:
        """Stop watching; with ``stop_daemons``, umount every instance and stop every daemon.
        Without it the daemons keep serving (a manager restart picks them up again)."""
        with self.lock:
            if stop_daemons:
                for rec in sorted(self.instances.values(), key=lambda r: -r["seq"]):
                    self._umount(self._set_state(rec, REMOVING))
                for d in list(self.daemons.values()):
                    self._destroy(d)
            self.monitor.close()
            for d in self.daemons.values():
                if d.supervisor is not None:
                    d.supervisor.close()
                d.reset_client()
            self.store.close()
