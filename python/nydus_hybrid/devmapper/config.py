"""The devmapper snapshotter's configuration: containerd's devmapper plugin keys (spec B1),
read from a TOML file, either at its top level or under
`[plugins."io.containerd.snapshotter.v1.devmapper"]` (so a containerd config.toml works as
it is). A bad value is one error naming its key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

from nydus_hybrid.snapshotter.config import ConfigError, read_toml

PLUGIN = "io.containerd.snapshotter.v1.devmapper"
FS_TYPES = ("ext4", "ext2", "xfs")
DEFAULT_EXT4_OPTIONS = "nodiscard,lazy_itable_init=0,lazy_journal_init=0"
MAX_SIZE = 1 << 60

# Units as containerd's size strings read them (go-units RAMInBytes): binary multiples.
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp]?)(i?b?)$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in a size string such as "10GB", "128MB", "512Mi" or "4096"; ValueError
    otherwise."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (such as 128MB or 10GB)")
    value = float(m[1]) * _UNITS[m[2].lower()]
    if not 0 < value <= MAX_SIZE:
        raise ValueError(f"{text!r} is out of range")
    return int(value)


@dataclass(frozen=True)
class DevmapperConfig:
    root_path: str
    pool_name: str
    base_image_size: int  # bytes
    async_remove: bool = False
    discard_blocks: bool = False
    fs_type: str = "ext4"
    fs_options: str = ""

    @property
    def mkfs_options(self) -> str:
        """The `-E` options for ext4/ext2 (ext4's default when none are given)."""
        if self.fs_type == "ext4":
            return self.fs_options or DEFAULT_EXT4_OPTIONS
        return self.fs_options


def from_dict(doc: Dict[str, Any], default_root: str = "") -> DevmapperConfig:
    def get(key: str, kind: type, default: Any) -> Any:
        value = doc.get(key, default)
        if (kind is bool) != isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(f"{key}: expected a {kind.__name__}, got {value!r}")
        return value

    root = get("root_path", str, "") or default_root
    if not root:
        raise ConfigError("root_path: required")
    pool = get("pool_name", str, "")
    if not pool:
        raise ConfigError("pool_name: required (the name of an existing thin pool under /dev/mapper)")
    if "/" in pool or pool in (".", ".."):
        raise ConfigError(f"pool_name: {pool!r} is not a device-mapper name")
    size_text = get("base_image_size", str, "")
    if not size_text:
        raise ConfigError("base_image_size: required (such as 10GB)")
    try:
        size = parse_size(size_text)
    except ValueError as e:
        raise ConfigError(f"base_image_size: {e}") from None
    fs_type = get("fs_type", str, "ext4") or "ext4"
    if fs_type not in FS_TYPES:
        raise ConfigError(f"fs_type: {fs_type!r}: expected one of {', '.join(FS_TYPES)}")
    return DevmapperConfig(
        root_path=root,
        pool_name=pool,
        base_image_size=size,
        async_remove=get("async_remove", bool, False),
        discard_blocks=get("discard_blocks", bool, False),
        fs_type=fs_type,
        fs_options=get("fs_options", str, ""),
    )


def load(path: str, default_root: str = "") -> DevmapperConfig:
    doc = read_toml(path)
    section: Optional[Any] = doc.get("plugins", {}).get(PLUGIN) if isinstance(doc.get("plugins"), dict) else None
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f'plugins."{PLUGIN}": expected a table')
    return from_dict(section if section is not None else doc, default_root)
