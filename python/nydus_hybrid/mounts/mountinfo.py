"""The one reader of ``/proc/self/mountinfo``. Callers learn whether a path is mounted, and
which FUSE connection serves it, without a ``stat`` of the mount: on a live FUSE mount a
``stat`` is a request to its daemon, which during a takeover nobody serves yet."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: the daemon's early mount uses this module
if TYPE_CHECKING:
    from typing import Dict, List, Optional

MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mountpoint_path(path: str) -> str:
    """The canonical path of a mountpoint without looking at the mountpoint itself: its
    parent is resolved, its own name kept."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)) if path != "/" else path


def mount_entry(path: str) -> Optional[str]:
    """The last mountinfo line whose mount point is ``path`` (canonical), or None."""
    found = None
    with open(MOUNTINFO) as f:
        for line in f:
            if _unescape(line.split()[4]) == path:
                found = line
    return found


def mounts_under(path: str) -> List[str]:
    """Mount points strictly inside ``path`` (canonical), deepest first."""
    prefix = path.rstrip("/") + "/"
    with open(MOUNTINFO) as f:
        found = {p for p in (_unescape(line.split()[4]) for line in f) if p.startswith(prefix)}
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def mount_fields(path: str) -> Optional[Dict[str, str]]:
    """The fields of the mount at ``path`` (canonical) that tell what it is: ``device``
    (major:minor, shared by a bind mount and its source), ``fstype``, ``source`` and the
    superblock options ``super`` (an overlay's ``lowerdir=`` is there)."""
    line = mount_entry(path)
    if line is None:
        return None
    fields = line.split()
    sep = fields.index("-")
    return {
        "device": fields[2],
        "fstype": fields[sep + 1],
        "source": _unescape(fields[sep + 2]),
        "super": _unescape(fields[sep + 3]) if len(fields) > sep + 3 else "",
    }


def is_mountpoint(path: str) -> bool:
    return mount_entry(path) is not None


def fuse_conn_id(mountpoint: str) -> Optional[int]:
    """The ``/sys/fs/fuse/connections/<id>`` number of the FUSE mount at ``mountpoint``: the
    minor of its device."""
    line = mount_entry(mountpoint)
    if line is None or " - fuse" not in line:
        return None
    return int(line.split()[2].split(":")[1])
