"""The daemon's entry point (``python -m nydus_hybrid.daemon``): nydusd's command line, logs,
limits, then the ``fuse`` daemon (``fusedev``) or the ``singleton`` one (``singleton``)."""

from __future__ import annotations

import argparse
import logging
import resource
import sys
from typing import TYPE_CHECKING, Optional, Sequence

from nydus_hybrid import log, version
from nydus_hybrid.daemon import args as dargs

if TYPE_CHECKING:
    from nydus_hybrid.daemon.early import Early

# Each daemon's module is imported only by a start in its mode: start-up time is paid by
# every container of a dedicated-mode snapshotter.


def version_text() -> str:
    """nydusd's ``--version`` lines."""
    info = version.build_info()
    return "\n".join(
        [
            f"Version:\t{info['package_ver']}",
            f"Git Commit:\t{info['git_commit']}",
            f"Build Time:\t{info['build_time']}",
            f"Profile:\t{info['profile']}",
            f"Rustc:\t{info['rustc']}",
        ]
    )


def _raise_nofile(want: int) -> None:
    """nydusd's `--rlimit-nofile` (0: leave it): many images and blobs mean many fds."""
    if want <= 0:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    except (ValueError, OSError) as e:
        log.event("rlimit_nofile", level=logging.WARNING, wanted=want, error=str(e))


def setup_logging(a: argparse.Namespace) -> None:
    handler: Optional[logging.Handler] = None
    if a.log_file:
        if a.log_rotation_size > 0:
            from logging.handlers import RotatingFileHandler

            handler = RotatingFileHandler(a.log_file, maxBytes=a.log_rotation_size << 20, backupCount=5)
        else:
            handler = logging.FileHandler(a.log_file)
    log.setup(
        "debug" if a.log_level == "trace" else {"warn": "warning", "off": "error"}.get(a.log_level, a.log_level),
        handler=handler,
    )


def main(argv: Optional[Sequence[str]] = None, early: Optional[Early] = None) -> int:
    """``early``: the mount ``daemon.early`` made from this argv, if any. It is adopted by the
    fuse daemon or, whatever happens (a usage error included), unmounted."""
    try:
        a = dargs.parse(argv)
        if a.version:
            print(version_text())
            return 0
        try:
            setup_logging(a)
        except OSError as e:
            print(f"nydusd: error: cannot open the log file {a.log_file}: {e.strerror}", file=sys.stderr)
            return 1
        _raise_nofile(a.rlimit_nofile)
        if a.mode == "singleton":
            from nydus_hybrid.daemon import singleton

            return singleton.run(a)
        from nydus_hybrid.daemon import fusedev

        return fusedev.run(a, early)
    finally:
        if early is not None:
            early.undo()  # nothing, once the daemon has taken the session
