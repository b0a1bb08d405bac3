"""Validation of volume, vdisk and mount names: each becomes one path component (a
subvolume, a file or a directory), so anything that could leave its parent is refused."""

from __future__ import annotations

from nydus_hybrid.storage.errors import InvalidName, InvalidSize

MAX_NAME_BYTES = 255  # NAME_MAX of Linux filesystems
RESERVED_PREFIX = "zdb"  # zos keeps these names for its 0-db namespaces


def check_name(name: str) -> str:
    """``name`` if it is usable, else ``InvalidName`` saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidName("a name must be a non-empty string")
    if "/" in name or "\0" in name:
        raise InvalidName(f"name {name!r}: must not contain '/' or NUL")
    if name in (".", ".."):
        raise InvalidName(f"name {name!r}: not a usable name")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise InvalidName(f"name {name[:32]!r}...: longer than {MAX_NAME_BYTES} bytes")
    if name.startswith(RESERVED_PREFIX):
        raise InvalidName(f"name {name!r}: the {RESERVED_PREFIX!r} prefix is reserved")
    return name


def check_size(size: object) -> int:
    """``size`` if it is a positive number of bytes, else ``InvalidSize``."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InvalidSize(f"size must be a positive number of bytes, not {size!r}")
    return size
