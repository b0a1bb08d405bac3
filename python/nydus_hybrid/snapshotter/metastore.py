"""Snapshot metadata with containerd's storage semantics (`snapshots/storage`), in SQLite:
every snapshot has a numeric id (kept when an active snapshot is committed), a kind, a
parent, labels, times and, once committed, its usage. Each RPC runs in one transaction
(`transaction()`), rolled back if anything in it fails, so a failed call leaves nothing
half-made. The errors are containerd's: a duplicate key is AlreadyExists, a missing parent
NotFound, a parent that is not committed InvalidArgument, removing a snapshot with children
FailedPrecondition."""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from nydus_hybrid.snapshotter.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

MAX_LABEL = 4096  # one key plus its value, in bytes (containerd's labels.Validate)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind INTEGER NOT NULL,
    parent TEXT REFERENCES snapshots(key),
    labels TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""


class Kind(enum.IntEnum):
    """The wire values of containerd's snapshots.v1 Kind."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass
class Info:
    name: str
    parent: str
    kind: Kind
    created_ns: int
    updated_ns: int
    labels: Dict[str, str] = field(default_factory=dict)


@dataclass
class Snapshot:
    """An active or view snapshot: its id and the ids of its parents, nearest first."""

    id: str
    kind: Kind
    parent_ids: List[str]


@dataclass
class Usage:
    size: int = 0
    inodes: int = 0


def validate_labels(labels: Dict[str, str]) -> None:
    for k, v in labels.items():
        if not k:
            raise InvalidArgument("label key must not be empty")
        if len(k.encode()) + len(v.encode()) > MAX_LABEL:
            raise InvalidArgument(f"label key and value greater than maximum size ({MAX_LABEL} bytes), key: {k[:64]}")


class MetaStore:
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._depth = 0

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[MetaStore]:
        """One write transaction (nested uses join the outer one); rolled back on error."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self.db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if outer:
                    self.db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self.db.execute("COMMIT")

    # -- reads

    def _row(self, key: str) -> Optional[Tuple[int, int, Optional[str], str, int, int, int, int]]:
        cur = self.db.execute(
            "SELECT id, kind, parent, labels, created_ns, updated_ns, size, inodes FROM snapshots WHERE key = ?",
            (key,),
        )
        row: Optional[Tuple[int, int, Optional[str], str, int, int, int, int]] = cur.fetchone()
        return row

    def _need(self, key: str) -> Tuple[int, int, Optional[str], str, int, int, int, int]:
        row = self._row(key)
        if row is None:
            raise NotFound(f"snapshot {key}: not found")
        return row

    def _info(self, key: str, row: Tuple[int, int, Optional[str], str, int, int, int, int]) -> Info:
        _, kind, parent, labels, created, updated, _, _ = row
        return Info(key, parent or "", Kind(kind), created, updated, json.loads(labels))

    def info(self, key: str) -> Tuple[str, Info, Usage]:
        row = self._need(key)
        return str(row[0]), self._info(key, row), Usage(row[6], row[7])

    def parent_ids(self, parent: Optional[str]) -> List[str]:
        ids = []
        while parent:
            row = self._need(parent)
            ids.append(str(row[0]))
            parent = row[2]
        return ids

    def chain(self, key: str) -> List[Tuple[str, Info]]:
        """`key`'s ancestors as (id, info), nearest first."""
        out = []
        parent = self._need(key)[2]
        while parent:
            row = self._need(parent)
            out.append((str(row[0]), self._info(parent, row)))
            parent = row[2]
        return out

    def snapshot(self, key: str) -> Snapshot:
        """An active or view snapshot (what Mounts may ask for)."""
        row = self._need(key)
        if row[1] not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPrecondition(f"requested snapshot {key} not active or view")
        return Snapshot(str(row[0]), Kind(row[1]), self.parent_ids(row[2]))

    def walk(self) -> Iterator[Tuple[str, Info]]:
        rows = self.db.execute(
            "SELECT key, id, kind, parent, labels, created_ns, updated_ns, size, inodes FROM snapshots ORDER BY id"
        ).fetchall()
        for key, id_, kind, parent, labels, created, updated, size, inodes in rows:
            yield key, self._info(key, (id_, kind, parent, labels, created, updated, size, inodes))

    def ids(self) -> Dict[str, str]:
        """Every snapshot's id, to its key (what Cleanup keeps)."""
        return {str(i): k for i, k in self.db.execute("SELECT id, key FROM snapshots")}

    # -- writes (inside `transaction()`)

    def create(self, kind: Kind, key: str, parent: str, labels: Dict[str, str]) -> Snapshot:
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise InvalidArgument(
                f"snapshot type {kind.name} invalid; only snapshots of type Active or View can be created"
            )
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        validate_labels(labels)
        if self._row(key) is not None:
            raise AlreadyExists(f"snapshot {key} already exists")
        if parent:
            prow = self._row(parent)
            if prow is None:
                raise NotFound(f"missing parent {parent!r} bucket: not found")
            if prow[1] != Kind.COMMITTED:
                raise InvalidArgument(f"parent {parent!r} is not committed snapshot")
        now = time.time_ns()
        cur = self.db.execute(
            "INSERT INTO snapshots (key, kind, parent, labels, created_ns, updated_ns) VALUES (?, ?, ?, ?, ?, ?)",
            (key, int(kind), parent or None, json.dumps(labels), now, now),
        )
        return Snapshot(str(cur.lastrowid), kind, self.parent_ids(parent))

    def commit(self, key: str, name: str, usage: Usage, labels: Dict[str, str]) -> str:
        """The active snapshot `key` becomes the committed `name` (same id); returns the id."""
        validate_labels(labels)
        if not name:
            raise InvalidArgument("committed snapshot name must not be empty")
        if self._row(name) is not None:
            raise AlreadyExists(f"committed snapshot {name} already exists")
        row = self._need(key)
        if row[1] != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key} is not active")
        now = time.time_ns()
        self.db.execute(
            "UPDATE snapshots SET key = ?, kind = ?, labels = ?, updated_ns = ?, size = ?, inodes = ? WHERE id = ?",
            (name, int(Kind.COMMITTED), json.dumps(labels), now, usage.size, usage.inodes, row[0]),
        )
        return str(row[0])

    def update(self, info: Info, paths: Sequence[str]) -> Info:
        row = self._need(info.name)
        labels: Dict[str, str] = json.loads(row[3])
        if not paths:
            labels = dict(info.labels)
        for p in paths:
            if p == "labels":
                labels = dict(info.labels)
            elif p.startswith("labels."):
                k = p[len("labels.") :]
                if k in info.labels:
                    labels[k] = info.labels[k]
                else:
                    labels.pop(k, None)
            else:
                raise InvalidArgument(f"cannot update {p!r} field on snapshot {info.name!r}")
        validate_labels(labels)
        now = time.time_ns()
        self.db.execute(
            "UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?", (json.dumps(labels), now, row[0])
        )
        return self._info(info.name, self._need(info.name))

    def remove(self, key: str) -> Tuple[str, Kind]:
        row = self._need(key)
        child = self.db.execute("SELECT key FROM snapshots WHERE parent = ? LIMIT 1", (key,)).fetchone()
        if child is not None:
            raise FailedPrecondition(f"cannot remove snapshot with child: {key} has {child[0]}")
        self.db.execute("DELETE FROM snapshots WHERE id = ?", (row[0],))
        return str(row[0]), Kind(row[1])
