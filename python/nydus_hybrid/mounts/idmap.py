"""User-namespace id mappings (containerd's `inside:host:size` labels) and idmapped bind
mounts, for containers in a user namespace (remap-ids). The parser and the mount live in
the core (`rust/src/idmap.rs`), so the daemon and the snapshotter read mappings one way."""

from __future__ import annotations

from typing import Tuple

from nydus_hybrid import _core


def parse(text: str, what: str) -> Tuple[int, int, int]:
    """(inside, host, size) of `text`; ConfigError naming `what` if it is not a mapping."""
    return _core.parse_id_mapping(text, what)


def bind(source: str, target: str, uid_mapping: str, gid_mapping: str, readonly: bool = True) -> None:
    """Bind `source` at `target` with owners shifted by the two mappings (an owner k on disk
    is seen as the host id k maps to); NydusIOError naming the step that failed."""
    _core.idmapped_bind(source, target, uid_mapping, gid_mapping, readonly)
