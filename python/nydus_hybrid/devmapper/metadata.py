"""The pool's device metadata (containerd's `PoolMetadata`, spec B4), in SQLite instead of
bolt: one row per thin device (name, 24-bit id, size, parent, state, last error) and the
state of every id ever handed out (free, taken, faulty). Each change is one transaction.
Ids are allocated lowest free first, else the next never-used one; a faulty id is never
handed out again."""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterator, List, Optional

from nydus_hybrid.devmapper.dmsetup import MAX_DEVICE_ID


class DeviceState(enum.IntEnum):
    """containerd's device states, by number (stored as the integer)."""

    UNKNOWN = 0
    CREATING = 1
    CREATED = 2
    ACTIVATING = 3
    ACTIVATED = 4
    SUSPENDING = 5
    SUSPENDED = 6
    RESUMING = 7
    RESUMED = 8
    DEACTIVATING = 9
    DEACTIVATED = 10
    REMOVING = 11
    REMOVED = 12
    FAULTY = 13

    def __str__(self) -> str:
        # containerd's String() has no case for Unknown: its default branch prints this.
        return "unknown 0" if self is DeviceState.UNKNOWN else self.name.capitalize()


class IdState(enum.IntEnum):
    FREE = 0
    TAKEN = 1
    FAULTY = 2


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    device_id: int
    size: int  # bytes: the thin device's virtual size
    parent_name: str = ""
    state: DeviceState = DeviceState.UNKNOWN
    error: str = ""


class MetadataError(Exception):
    pass


class DeviceNotFound(MetadataError):
    pass


class DeviceExists(MetadataError):
    pass


class NoFreeIds(MetadataError):
    pass


SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    name TEXT PRIMARY KEY,
    device_id INTEGER NOT NULL,
    size INTEGER NOT NULL,
    parent_name TEXT NOT NULL,
    state INTEGER NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS device_ids (id INTEGER PRIMARY KEY, state INTEGER NOT NULL);
"""


class PoolMetadata:
    """`<root_path>/<pool_name>.db`. Safe to share between threads."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed change survives a power cut
        self.db.executescript(SCHEMA)
        self._closed = False

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise MetadataError(f"{self.path}: closed")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- ids

    def _allocate_id(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT id FROM device_ids WHERE state = ? ORDER BY id LIMIT 1", (IdState.FREE,)).fetchone()
        if row is None:
            top = db.execute("SELECT COALESCE(MAX(id), 0) FROM device_ids").fetchone()[0]
            if top >= MAX_DEVICE_ID:
                raise NoFreeIds(f"all {MAX_DEVICE_ID} thin device ids are taken or faulty")
            row = (top + 1,)
        db.execute("INSERT OR REPLACE INTO device_ids (id, state) VALUES (?, ?)", (row[0], IdState.TAKEN))
        return int(row[0])

    def id_state(self, device_id: int) -> Optional[IdState]:
        with self._lock:
            row = self.db.execute("SELECT state FROM device_ids WHERE id = ?", (device_id,)).fetchone()
        return None if row is None else IdState(row[0])

    def faulty_ids(self) -> List[int]:
        """The quarantined ids (never handed out again)."""
        with self._lock:
            rows = self.db.execute("SELECT id FROM device_ids WHERE state = ? ORDER BY id", (IdState.FAULTY,))
            return [int(r[0]) for r in rows.fetchall()]

    # -- devices

    def add_device(self, name: str, size: int, parent_name: str = "") -> DeviceInfo:
        """A new record in state Unknown with a fresh id. A name already recorded is
        refused unless that record is Faulty: it is then replaced (its id stays faulty)."""
        if not name:
            raise MetadataError("a device needs a name")
        with self._tx() as db:
            old = self._get(db, name)
            if old is not None and old.state != DeviceState.FAULTY:
                raise DeviceExists(f"device {name} already exists ({old.state})")
            info = DeviceInfo(name, self._allocate_id(db), size, parent_name)
            self._put(db, info)
            return info

    def update_device(self, name: str, change: Callable[[DeviceInfo], DeviceInfo]) -> DeviceInfo:
        """Apply `change` to the record; it may not change the name or the id."""
        with self._tx() as db:
            old = self._need(db, name)
            new = change(old)
            if (new.name, new.device_id) != (old.name, old.device_id):
                raise MetadataError(f"device {name}: its name and id cannot change")
            self._put(db, new)
            return new

    def change_device_state(self, name: str, state: DeviceState, error: str = "") -> DeviceInfo:
        return self.update_device(name, lambda d: replace(d, state=state, error=error))

    def mark_faulty(self, name: str, error: str = "") -> DeviceInfo:
        """The record goes Faulty and its id is quarantined."""
        with self._tx() as db:
            old = self._need(db, name)
            d = replace(old, state=DeviceState.FAULTY, error=error or old.error)
            self._put(db, d)
            db.execute("UPDATE device_ids SET state = ? WHERE id = ?", (IdState.FAULTY, d.device_id))
            return d

    def get_device(self, name: str) -> DeviceInfo:
        with self._lock:
            return self._need(self.db, name)

    def find_device(self, name: str) -> Optional[DeviceInfo]:
        with self._lock:
            return self._get(self.db, name)

    def remove_device(self, name: str) -> None:
        """Delete the record; its id is free again (a faulty id stays faulty)."""
        with self._tx() as db:
            d = self._need(db, name)
            db.execute("DELETE FROM devices WHERE name = ?", (name,))
            db.execute(
                "UPDATE device_ids SET state = ? WHERE id = ? AND state = ?", (IdState.FREE, d.device_id, IdState.TAKEN)
            )

    def walk_devices(self) -> List[DeviceInfo]:
        with self._lock:
            rows = self.db.execute("SELECT * FROM devices ORDER BY name").fetchall()
        return [_row_info(r) for r in rows]

    def device_names(self) -> List[str]:
        return [d.name for d in self.walk_devices()]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.db.close()

    # -- rows

    def _get(self, db: sqlite3.Connection, name: str) -> Optional[DeviceInfo]:
        row = db.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchone()
        return None if row is None else _row_info(row)

    def _need(self, db: sqlite3.Connection, name: str) -> DeviceInfo:
        d = self._get(db, name)
        if d is None:
            raise DeviceNotFound(f"device {name}: not found")
        return d

    def _put(self, db: sqlite3.Connection, d: DeviceInfo) -> None:
        db.execute(
            "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?)",
            (d.name, d.device_id, d.size, d.parent_name, int(d.state), d.error),
        )


def _row_info(row: tuple[str, int, int, str, int, str]) -> DeviceInfo:
    name, device_id, size, parent, state, error = row
    return DeviceInfo(name, int(device_id), int(size), parent, DeviceState(state), error)
