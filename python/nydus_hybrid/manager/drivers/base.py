"""The interface every filesystem driver of the manager implements (see the package's
docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from nydus_hybrid.manager.daemon import Daemon, DaemonRecord


@dataclass
class InstancePlan:
    """What a driver decides for a new shared instance before anything is written."""

    config_text: str  # what is stored as the instance's config file
    mountpoint: str  # where the instance appears
    annotations: Dict[str, str]


class FsDriver:
    """One filesystem driver. Subclasses set ``name`` and override what differs."""

    name = ""
    #: A driver that serves every instance from one daemon forces shared mode.
    shared_only = False

    def __init__(self, root: str, options: Optional[Dict[str, Any]] = None):
        self.root = root
        self.options: Dict[str, Any] = dict(options or {})

    # --- daemons --------------------------------------------------------------------------

    def record_fields(self, mountpoint: str) -> Tuple[str, Dict[str, Any]]:
        """The new daemon's (FUSE mountpoint or "", driver options)."""
        return mountpoint, {}

    def daemon_argv(self, r: DaemonRecord) -> Tuple[List[str], List[str], List[str]]:
        """The driver's parts of the daemon's command line, in the snapshotter's order:
        (subcommand and its options, options before ``--id``, options at the end)."""
        raise NotImplementedError

    def daemon_dirs(self, r: DaemonRecord) -> List[str]:
        """Directories the daemon needs before it starts."""
        return []

    def vestige_mounts(self, r: DaemonRecord, instances: Sequence[Dict[str, Any]]) -> List[str]:
        """The mounts a dead daemon leaves behind, to detach before a restart."""
        raise NotImplementedError

    # --- instances ------------------------------------------------------------------------

    def check_config(self, key: str, config: Any, config_text: str) -> None:
        """Refuse a config the driver cannot use, before anything is written."""

    def plan_instance(self, key: str, d: Daemon, bootstrap: str, config_text: str) -> InstancePlan:
        raise NotImplementedError

    def mount(self, d: Daemon, rafs: Dict[str, Any]) -> None:
        raise NotImplementedError

    def umount(self, d: Daemon, rafs: Dict[str, Any]) -> None:
        raise NotImplementedError

    def update_auth(self, d: Daemon, rafs: Dict[str, Any], registry_auth: str) -> None:
        """Hand new basic credentials to the running daemon serving `rafs` (its config
        file is already rewritten). By default nothing: the daemon reads them when it
        restarts."""

    def mounted_keys(self, d: Daemon, instances: Sequence[Dict[str, Any]]) -> List[str]:
        """The instance keys the daemon serves now (``instances``: the ones recorded for it)."""
        raise NotImplementedError
