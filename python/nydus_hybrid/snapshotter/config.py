"""nydus-snapshotter's TOML configuration (spec A3), the part this snapshotter acts on:
`version` (must be 1), `root` (at most 70 bytes, so daemon socket paths under it fit), `address`,
`daemon_mode`, `[daemon]` (`nydusd_path`, `nydusd_config`, `fs_driver`, `recover_policy`,
`failover_policy`, `threads_number`), `[log]` (`level`, `log_to_stdout`), `[cache_manager]`
(`cache_dir`), `[remote]` (`skip_ssl_verify`, `mirrors_config.dir`, and our
`plain_http_registries`),
`[remote.auth]` (`enable_cri_keychain`, `image_service_address`,
`credential_renewal_interval`: a Go duration such as "30s" or "5m", or integer nanoseconds;
0 is off). Command-line
flags override the file. A bad value is one error naming its key."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from nydus_hybrid.snapshotter.backend import TemplateError, load_template

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 and 3.10
    import tomli as tomllib

DEFAULT_ROOT = "/var/lib/containerd/io.containerd.snapshotter.v1.nydus"
DEFAULT_ADDRESS = "/run/containerd-nydus/containerd-nydus-grpc.sock"
MAX_ROOT = 70
DAEMON_MODES = {"multiple": "dedicated", "dedicated": "dedicated", "shared": "shared"}
FS_DRIVERS = ("fusedev", "fscache")
NOT_BUILT = ("blockdev", "proxy", "nodev")


class ConfigError(ValueError):
    pass


@dataclass
class SnapshotterConfig:
    root: str = DEFAULT_ROOT
    address: str = DEFAULT_ADDRESS
    daemon_mode: str = "multiple"
    nydusd_path: str = ""  # empty: our daemon (python -m nydus_hybrid.daemon)
    fs_driver: str = "fusedev"
    recover_policy: str = "restart"
    failover_policy: str = "resend"
    threads_number: int = 0
    log_level: str = "info"
    log_to_stdout: bool = False
    cache_dir: str = ""  # empty: <root>/cache
    skip_ssl_verify: bool = False
    plain_http_registries: List[str] = field(default_factory=list)
    enable_cri_keychain: bool = False
    image_service_address: str = ""  # empty: containerd's default socket
    nydusd_config: str = ""  # a nydusd document every instance starts from; empty: built in
    mirrors_dir: str = ""  # [remote] mirrors_config.dir: <dir>/<host>/hosts.toml files
    credential_renewal_interval: float = 0.0  # seconds; 0: no renewal

    @property
    def manager_mode(self) -> str:
        return DAEMON_MODES[self.daemon_mode]

    def effective_cache_dir(self) -> str:
        return self.cache_dir or f"{self.root.rstrip('/')}/cache"

    def effective_image_service(self) -> str:
        return self.image_service_address or "/run/containerd/containerd.sock"

    def validate(self) -> SnapshotterConfig:
        if len(self.root.encode()) > MAX_ROOT:
            raise ConfigError(f"root: {self.root!r} is longer than {MAX_ROOT} bytes (daemon sockets live under it)")
        if self.daemon_mode not in DAEMON_MODES:
            raise ConfigError(f"daemon_mode: {self.daemon_mode!r}: expected one of {', '.join(DAEMON_MODES)}")
        if self.fs_driver in NOT_BUILT:
            raise ConfigError(f"daemon.fs_driver: {self.fs_driver!r} is not supported here (fusedev, fscache)")
        if self.fs_driver not in FS_DRIVERS:
            raise ConfigError(f"daemon.fs_driver: {self.fs_driver!r}: expected one of {', '.join(FS_DRIVERS)}")
        if self.recover_policy not in ("none", "restart", "failover"):
            raise ConfigError(f"daemon.recover_policy: {self.recover_policy!r}: expected none, restart or failover")
        if self.failover_policy not in ("none", "resend", "flush"):
            raise ConfigError(f"daemon.failover_policy: {self.failover_policy!r}: expected none, resend or flush")
        if self.enable_cri_keychain and not self.effective_image_service():
            raise ConfigError("remote.auth.image_service_address: empty, and the CRI keychain needs it")
        if self.mirrors_dir and not os.path.isdir(self.mirrors_dir):
            raise ConfigError(f"remote.mirrors_config.dir: {self.mirrors_dir!r} is not a directory")
        if self.nydusd_config:
            try:
                load_template(self.nydusd_config)
            except TemplateError as e:
                raise ConfigError(f"daemon.nydusd_config: {e}") from None
        if not 0 <= self.threads_number <= 1024:
            raise ConfigError(f"daemon.threads_number: {self.threads_number} is not between 0 and 1024")
        return self


def _get(doc: Dict[str, Any], path: str, kind: type, default: Any) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    if (kind is int and isinstance(node, bool)) or not isinstance(node, kind):
        raise ConfigError(f"{path}: expected a {kind.__name__}, got {node!r}")
    return node


def read_toml(path: str) -> Dict[str, Any]:
    """A TOML file's tables; a missing or malformed file is one ConfigError."""
    try:
        with open(path, "rb") as f:
            doc: Dict[str, Any] = tomllib.load(f)
            return doc
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not TOML ({e})") from None


def load(path: Optional[str]) -> SnapshotterConfig:
    """The configuration in `path` (defaults for what it leaves out; all defaults with no
    file)."""
    if path is None:
        return SnapshotterConfig()
    doc = read_toml(path)
    version = _get(doc, "version", int, 1)
    if version != 1:
        raise ConfigError(f"version: {version}: this configuration format is version 1")
    d = SnapshotterConfig()
    return SnapshotterConfig(
        root=_get(doc, "root", str, d.root),
        address=_get(doc, "address", str, d.address),
        daemon_mode=_get(doc, "daemon_mode", str, d.daemon_mode),
        nydusd_path=_get(doc, "daemon.nydusd_path", str, d.nydusd_path),
        fs_driver=_get(doc, "daemon.fs_driver", str, d.fs_driver),
        recover_policy=_get(doc, "daemon.recover_policy", str, d.recover_policy),
        failover_policy=_get(doc, "daemon.failover_policy", str, d.failover_policy),
        threads_number=_get(doc, "daemon.threads_number", int, d.threads_number),
        log_level=_get(doc, "log.level", str, d.log_level),
        log_to_stdout=_get(doc, "log.log_to_stdout", bool, d.log_to_stdout),
        cache_dir=_get(doc, "cache_manager.cache_dir", str, d.cache_dir),
        skip_ssl_verify=_get(doc, "remote.skip_ssl_verify", bool, d.skip_ssl_verify),
        plain_http_registries=list(_get(doc, "remote.plain_http_registries", list, [])),
        enable_cri_keychain=_get(doc, "remote.auth.enable_cri_keychain", bool, d.enable_cri_keychain),
        image_service_address=_get(doc, "remote.auth.image_service_address", str, d.image_service_address),
        nydusd_config=_get(doc, "daemon.nydusd_config", str, d.nydusd_config),
        mirrors_dir=_get(doc, "remote.mirrors_config.dir", str, d.mirrors_dir),
        credential_renewal_interval=_duration(doc, "remote.auth.credential_renewal_interval"),
    ).validate()


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string ("1h30m", "250ms", "0"); ValueError otherwise."""
    if text == "0":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration (such as 30s, 5m or 1h30m)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _duration(doc: Dict[str, Any], path: str) -> float:
    """A duration key: a Go duration string, or integer nanoseconds (as Go's TOML reads it)."""
    value = _get(doc, path, object, 0)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f'{path}: expected a duration such as "30s", got {value!r}')
    try:
        seconds = value * 1e-9 if isinstance(value, int) else parse_duration(value)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    if seconds < 0:
        raise ConfigError(f"{path}: {value!r} is negative")
    return seconds
