"""What every snapshotter here answers from its metastore alone, whatever holds the
snapshots' data (overlay directories, thin devices): Stat, Update and Walk."""

from __future__ import annotations

import functools
from typing import Iterator, Optional, Sequence

from nydus_hybrid.snapshotter import filters
from nydus_hybrid.snapshotter.metastore import Info, Kind, MetaStore


class MetastoreQueries:
    ms: MetaStore

    def stat(self, key: str) -> Info:
        return self.ms.info(key)[1]

    def update(self, info: Info, paths: Sequence[str]) -> Info:
        with self.ms.transaction():
            return self.ms.update(info, paths)

    def walk(self, exprs: Sequence[str]) -> Iterator[Info]:
        parsed = filters.parse_all(exprs)
        for _, info in list(self.ms.walk()):
            if filters.matches(parsed, functools.partial(_field, info)):
                yield info


def _field(info: Info, path: Sequence[str]) -> Optional[str]:
    """The snapshot fields filters can name (containerd's snapshot adaptor)."""
    if not path:
        return None
    head = path[0]
    if head == "name" and len(path) == 1:
        return info.name
    if head == "parent" and len(path) == 1:
        return info.parent
    if head == "kind" and len(path) == 1:
        return {Kind.VIEW: "view", Kind.ACTIVE: "active", Kind.COMMITTED: "committed"}.get(info.kind, "unknown")
    if head == "labels" and len(path) > 1:
        return info.labels.get(".".join(path[1:]))
    return None
