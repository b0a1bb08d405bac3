"""The manager's persistent state: daemons and RAFS instances in SQLite (WAL, one transaction
per change), the counterpart of nydus-snapshotter's ``nydus.db`` (spec A5.3).

Records are JSON documents keyed by id, so fields can be added without a migration; the
schema version guards the table layout. The store never deletes what it cannot parse: a
corrupt file or a newer schema is an error naming the file, and the file is left alone."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from types import TracebackType
from typing import Any, Dict, List, Optional, Sequence, Type

from nydus_hybrid.manager.errors import StoreError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS daemons (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    daemon_id TEXT NOT NULL,
    record TEXT NOT NULL
);
"""


class Store:
    def __init__(self, path: str):
        self.path = path
        self.lock = threading.RLock()  # one connection, used from the manager's threads
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fresh = not os.path.exists(path)
        try:
            # Autocommit mode; every change is an explicit BEGIN IMMEDIATE ... COMMIT.
            self.db = sqlite3.connect(path, timeout=4.0, isolation_level=None, check_same_thread=False)
            if fresh:
                os.chmod(path, 0o600)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            check = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"{path}: database is damaged ({check}); it was left untouched")
            with self.transaction():
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) > SCHEMA_VERSION:
                    raise StoreError(f"{path}: schema version {row[0]} is newer than this manager's ({SCHEMA_VERSION})")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: not a usable SQLite database ({e}); it was left untouched") from e

    def transaction(self) -> _Txn:
        return _Txn(self.db, self.lock)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> List[Any]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def close(self) -> None:
        self.db.close()

    # --- daemons ------------------------------------------------------------------------------

    def add_daemon(self, record: Dict[str, Any]) -> None:
        with self.transaction():
            if self.db.execute("SELECT 1 FROM daemons WHERE id=?", (record["id"],)).fetchone():
                raise StoreError(f"daemon {record['id']} already exists")
            self.db.execute("INSERT INTO daemons VALUES (?, ?)", (record["id"], json.dumps(record)))

    def update_daemon(self, record: Dict[str, Any]) -> None:
        with self.transaction():
            cur = self.db.execute("UPDATE daemons SET record=? WHERE id=?", (json.dumps(record), record["id"]))
            if cur.rowcount == 0:
                raise StoreError(f"daemon {record['id']} does not exist")

    def delete_daemon(self, daemon_id: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM daemons WHERE id=?", (daemon_id,))

    def daemons(self) -> List[Dict[str, Any]]:
        return [self._load(r, "daemon", i) for i, r in self._query("SELECT id, record FROM daemons ORDER BY id")]

    def daemon(self, daemon_id: str) -> Optional[Dict[str, Any]]:
        rows = self._query("SELECT record FROM daemons WHERE id=?", (daemon_id,))
        return self._load(rows[0][0], "daemon", daemon_id) if rows else None

    # --- instances ----------------------------------------------------------------------------

    def add_instance(self, record: Dict[str, Any]) -> Dict[str, Any]:
        """Insert with the next sequence number (recovery remounts in this order)."""
        with self.transaction():
            if self.db.execute("SELECT 1 FROM instances WHERE key=?", (record["snapshot_id"],)).fetchone():
                raise StoreError(f"instance {record['snapshot_id']} already exists")
            seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM instances").fetchone()[0]
            record = dict(record, seq=seq)
            self.db.execute(
                "INSERT INTO instances VALUES (?, ?, ?, ?)",
                (record["snapshot_id"], seq, record["daemon_id"], json.dumps(record)),
            )
            return record

    def update_instance(self, record: Dict[str, Any]) -> None:
        with self.transaction():
            cur = self.db.execute(
                "UPDATE instances SET record=?, daemon_id=? WHERE key=?",
                (json.dumps(record), record["daemon_id"], record["snapshot_id"]),
            )
            if cur.rowcount == 0:
                raise StoreError(f"instance {record['snapshot_id']} does not exist")

    def delete_instance(self, key: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM instances WHERE key=?", (key,))

    def instances(self) -> List[Dict[str, Any]]:
        return [self._load(r, "instance", k) for k, r in self._query("SELECT key, record FROM instances ORDER BY seq")]

    def instance(self, key: str) -> Optional[Dict[str, Any]]:
        rows = self._query("SELECT record FROM instances WHERE key=?", (key,))
        return self._load(rows[0][0], "instance", key) if rows else None

    def _load(self, text: str, what: str, key: str) -> Dict[str, Any]:
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            return doc
        except ValueError as e:
            raise StoreError(f"{self.path}: {what} record {key!r} is damaged ({e}); it was left untouched") from e


class _Txn:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: one transaction per change."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()
