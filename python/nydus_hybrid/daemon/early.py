"""The mount before the rest of the daemon loads.

In dedicated mode (nydus-snapshotter's default: one daemon per image) every container start
waits for its daemon, and most of a Python start is imports: the command line, logging, the
state machine, the HTTP server. So the common start (``fuse``, one bootstrap and its config,
nothing to take over) mounts here first, from a plain read of argv, with only ``os`` and the
Rust core loaded. The kernel can read files while the rest imports; ``fusedev`` then adopts
the mount, and RUNNING and the API come after it as in a normal start.

This is an optimisation, never a second command line: ``daemon.args`` stays the only
authority. Anything this reading does not recognise exactly (another mode, an option it
does not know, an abbreviation, a predecessor's socket, ``--upgrade``) means no early mount,
and any failure here is undone so that the normal start meets and reports it. Once the
command line is parsed, ``matches`` checks that it asks for what was mounted.
"""

from __future__ import annotations

import os

from nydus_hybrid import _core
from nydus_hybrid.daemon.options import DEFAULT_THREADS, FAILOVER_POLICIES, LOG_LEVELS, thread_count
from nydus_hybrid.mounts import mountinfo

TYPE_CHECKING = False  # not typing's: importing typing would cost the early start ~3 ms
if TYPE_CHECKING:
    import argparse
    from typing import Callable, Dict, List, Optional, Tuple

    from nydus_hybrid.types import CacheOpts, NormalizedConfig

# The FUSE timeouts and page-cache policy of every RAFS instance. nydusd's come from the
# instance; an image never changes under a mount, so long timeouts and a kept page cache
# are safe.
CACHE_OPTS: CacheOpts = {"entry_timeout": 60.0, "attr_timeout": 60.0, "keep_cache": True}

# The options an early start reads (each names its key in `Early.options`)...
_READ = {
    "--mountpoint": "mountpoint",
    "-M": "mountpoint",
    "--bootstrap": "bootstrap",
    "-B": "bootstrap",
    "--config": "config",
    "-C": "config",
    "--apisock": "apisock",
    "-A": "apisock",
    "--thread-num": "threads",
    "--fuse-threads": "threads",
}
# ...and those it only checks, as `daemon.args` will (they change nothing before the mount):
# an early start must never mount for a command line the parser then refuses.
_CHECKED: Dict[str, Callable[[str], bool]] = {
    "--id": lambda v: True,
    "--supervisor": lambda v: True,
    "--log-level": lambda v: v.lower() in LOG_LEVELS,
    "-l": lambda v: v.lower() in LOG_LEVELS,
    "--log-file": lambda v: True,
    "-L": lambda v: True,
    "--log-rotation-size": lambda v: v.isdigit(),
    "--rlimit-nofile": lambda v: v.isdigit(),
    "--failover-policy": lambda v: v in FAILOVER_POLICIES,
    "--backend-source": lambda v: True,  # the snapshotter's, with a system controller; ignored
}


def accounting(config: NormalizedConfig) -> Tuple[bool, bool, bool]:
    """The per-file counters an instance's config asks for: nydusd's (iostats_files,
    access_pattern, latest_read_files)."""
    rafs = config["rafs"]
    return (bool(rafs["iostats_files"]), bool(rafs["access_pattern"]), bool(rafs["latest_read_files"]))


class Early:
    """A mount made before the command line was parsed: the FUSE session (workers running)
    and, with a bootstrap, its image attached at ``/``."""

    def __init__(self, options: Dict[str, str]):
        self.options = options
        self.mountpoint = mountinfo.mountpoint_path(options["mountpoint"])
        self.threads = thread_count(options["threads"])
        self.fuse: Optional[_core.FuseMount] = None
        self.image: Optional[_core.Image] = None
        self.index = -1
        self.config_text = ""
        self.config: Optional[NormalizedConfig] = None

    def start(self) -> None:
        bootstrap = self.options.get("bootstrap")
        if bootstrap is not None:
            with open(self.options["config"]) as f:
                self.config_text = f.read()
            self.config = _core.parse_config(self.config_text)
            self.image = _core.Image.open(bootstrap, None, True, None, self.config_text, "/")
            self.image.stat(b"/")  # read and validate the bootstrap now, as a normal start does
        # One image at / (dedicated mode) lets the kernel cache listings without asking.
        self.fuse = _core.FuseMount.mount(self.mountpoint, "rafs", opendir=bootstrap is None)
        if self.image is not None and self.config is not None:
            o = CACHE_OPTS
            timeouts = (o["entry_timeout"], o["attr_timeout"], o["keep_cache"])
            self.index = self.fuse.attach("/", self.image, *timeouts, accounting(self.config))
        self.fuse.start(self.threads)

    def matches(self, a: argparse.Namespace) -> bool:
        """Whether the parsed command line asks for exactly this mount."""
        o = self.options
        return (
            a.mode == "fuse"
            and mountinfo.mountpoint_path(a.mountpoint) == self.mountpoint
            and a.bootstrap == o.get("bootstrap")
            and a.config == o.get("config")
            and a.threads == self.threads
            and a.virtual_mountpoint == "/"
            and not (a.upgrade or a.prefetch_files or a.localfs_dir or a.shared_dir)
        )

    def take(self) -> _core.FuseMount:
        """Hand the session over to its new owner (``FuseService.adopt``)."""
        fuse, self.fuse = self.fuse, None
        if fuse is None:
            raise RuntimeError("the early mount was already taken or undone")
        return fuse

    def undo(self) -> None:
        """Unmount, unless the session was taken: the normal start will do (or refuse) it again."""
        if self.fuse is not None:
            self.fuse.stop(True)
        self.fuse = None
        self.image = None


def read_argv(argv: List[str]) -> Optional[Dict[str, str]]:
    """The options of a start this module can make, or None for any other command line. The
    ``fuse`` subcommand may lead or be left out (it is the default), as with nydusd."""
    if not argv or not (argv[0] == "fuse" or argv[0].startswith("-")):
        return None
    options: Dict[str, str] = {}
    seen = set()
    rest = iter(argv[1:] if argv[0] == "fuse" else argv)
    for arg in rest:
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not eq:
            value = next(rest, "")
        if name in seen or not value or value.startswith("-"):
            return None  # repeated, or no value: argparse's rules decide
        seen.add(name)
        if name in _READ:
            options[_READ[name]] = value
        elif name not in _CHECKED or not _CHECKED[name](value):
            return None
    if "mountpoint" not in options or ("bootstrap" in options) != ("config" in options):
        return None
    if ("--id" in seen) != ("--supervisor" in seen) or len(options) != len(seen & set(_READ)):
        return None  # --id without --supervisor; a key given under two of its names
    if not thread_count(options.setdefault("threads", str(DEFAULT_THREADS))):
        return None
    return options


def _fresh_start(options: Dict[str, str]) -> bool:
    """Nothing to take over: no socket file of a predecessor (live or crashed) and no mount
    at the mountpoint, which must be a directory."""
    if "apisock" in options and os.path.lexists(options["apisock"]):
        return False
    mountpoint = mountinfo.mountpoint_path(options["mountpoint"])
    return os.path.isdir(mountpoint) and not mountinfo.is_mountpoint(mountpoint)


def start(argv: List[str]) -> Optional[Early]:
    """Mount now if ``argv`` is a start this module can make; None otherwise, or if it failed
    (undone: the normal start will report why)."""
    options = read_argv(argv)
    if options is None or not _fresh_start(options):
        return None
    early = Early(options)
    try:
        early.start()
    except Exception:
        early.undo()
        return None
    return early
