"""Compare two directory trees entry by entry: type, content, mode, owner, mtime, xattrs,
rdev, symlink targets and hard-link groups. Used to prove a build, an unpack or a kernel
mount reproduces its source."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple


@dataclass
class Entry:
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    rdev: int
    target: Optional[bytes]
    digest: Optional[str]
    xattrs: Dict[str, bytes]
    link_key: Tuple[int, int]
    nlink: int


@dataclass
class TreeDiff:
    differences: List[str] = field(default_factory=list)
    entries: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences


def _xattrs(path: str) -> Dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def scan(root: str, ignore: Iterable[str] = ()) -> Dict[str, Entry]:
    ignore = {i.strip("/") for i in ignore}
    out: Dict[str, Entry] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel) if rel else root
        st = os.lstat(path)
        is_link = stat.S_ISLNK(st.st_mode)
        out["/" + rel] = Entry(
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            size=st.st_size if stat.S_ISREG(st.st_mode) else 0,
            rdev=st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
            target=os.readlink(os.fsencode(path)) if is_link else None,
            digest=_digest(path) if stat.S_ISREG(st.st_mode) else None,
            xattrs=_xattrs(path),
            link_key=(st.st_dev, st.st_ino),
            nlink=st.st_nlink,
        )
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                child = os.path.join(rel, name) if rel else name
                if child not in ignore:
                    stack.append(child)
    return out


def _link_groups(entries: Dict[str, Entry]) -> Set[Tuple[str, ...]]:
    groups: Dict[Tuple[int, int], List[str]] = {}
    for p, e in entries.items():
        if stat.S_ISREG(e.mode) and e.nlink > 1:
            groups.setdefault(e.link_key, []).append(p)
    return {tuple(sorted(g)) for g in groups.values() if len(g) > 1}


def compare(
    expected_root: str,
    actual_root: str,
    *,
    ignore: Iterable[str] = (),
    mtime_resolution_ns: int = 1,
    check_root_mtime: bool = False,
    check_xattrs: bool = True,
    xattr_filter: Callable[[str], bool] = lambda name: True,
) -> TreeDiff:
    """Differences between two trees; ``mtime_resolution_ns=10**9`` compares whole seconds."""
    ignore = list(ignore)
    exp = scan(expected_root, ignore)
    act = scan(actual_root, ignore)
    diff = TreeDiff(entries=len(exp))
    for path in sorted(set(exp) | set(act)):
        if path not in act:
            diff.differences.append(f"{path}: missing")
            continue
        if path not in exp:
            diff.differences.append(f"{path}: unexpected")
            continue
        e, a = exp[path], act[path]
        for attr in ("mode", "uid", "gid", "size", "rdev", "target", "digest"):
            if getattr(e, attr) != getattr(a, attr):
                diff.differences.append(f"{path}: {attr} {getattr(e, attr)!r} != {getattr(a, attr)!r}")
        if path != "/" or check_root_mtime:
            if e.mtime_ns // mtime_resolution_ns != a.mtime_ns // mtime_resolution_ns:
                diff.differences.append(f"{path}: mtime {e.mtime_ns} != {a.mtime_ns}")
        if check_xattrs:
            ex = {k: v for k, v in e.xattrs.items() if xattr_filter(k)}
            ax = {k: v for k, v in a.xattrs.items() if xattr_filter(k)}
            if ex != ax:
                diff.differences.append(f"{path}: xattrs {ex!r} != {ax!r}")
    if _link_groups(exp) != _link_groups(act):
        diff.differences.append(f"hard-link groups differ: {sorted(_link_groups(exp))} != {sorted(_link_groups(act))}")
    return diff
