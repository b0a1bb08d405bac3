"""nydusd's command line (spec §6): ``fuse`` (the default) and ``singleton``, with the global
options valid before or after the subcommand. Conflicts get a one-line message and exit 2,
as clap does for nydusd."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, NoReturn, Optional, Sequence, Tuple

from nydus_hybrid.daemon.options import DEFAULT_THREADS, FAILOVER_POLICIES, LOG_LEVELS, MAX_THREADS, MODES, thread_count


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size gives it (COLUMNS, then stdout's
    terminal, then 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
        if columns <= 0 and sys.__stdout__ is not None:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (ValueError, OSError):
        columns = 0
    return columns if columns > 0 else 80


class _Formatter(argparse.HelpFormatter):
    """argparse's own, sized without importing shutil: every add_argument makes a formatter,
    and shutil's archive codecs cost each daemon start about 2.5 ms."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"nydusd: error: {message}\n")


def _threads(text: str) -> int:
    n = thread_count(text)
    if not n:
        raise argparse.ArgumentTypeError(f"invalid thread count {text!r}: must be 1..={MAX_THREADS}")
    return n


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nydusd", add_help=True, description="nydus-hybrid daemon, command-line compatible with nydusd")
    g = p.add_argument_group("global")
    g.add_argument("-A", "--apisock", help="HTTP API unix socket")
    g.add_argument("-C", "--config", help='fuse: FS config (v1/v2); singleton: {"blobs": [...]}')
    g.add_argument("--id", help="daemon id (needs --supervisor)")
    g.add_argument("--supervisor", help="supervisor socket for failover and upgrade (needs --id)")
    g.add_argument("--upgrade", action="store_true", help="start in INIT and wait for a takeover")
    g.add_argument("-l", "--log-level", default="info", type=str.lower, choices=LOG_LEVELS)
    g.add_argument("-L", "--log-file", help="log to this file instead of stderr")
    g.add_argument(
        "--log-rotation-size", type=int, default=0, metavar="MB", help="rotate the log file at this size (0: off)"
    )
    g.add_argument("--rlimit-nofile", type=int, default=1000000)
    g.add_argument("-V", "--version", action="store_true")
    f = p.add_argument_group("fuse")
    f.add_argument("-M", "--mountpoint")
    f.add_argument("--failover-policy", default="resend", choices=FAILOVER_POLICIES)
    f.add_argument("--fuse-threads", "--thread-num", dest="threads", type=_threads, default=DEFAULT_THREADS)
    f.add_argument("--writable", action="store_true")
    f.add_argument("-B", "--bootstrap")
    f.add_argument("-D", "--localfs-dir")
    f.add_argument("-s", "--shared-dir")
    f.add_argument("--prefetch-files", help="file with one absolute image path per line")
    f.add_argument("-m", "--virtual-mountpoint", default="/")
    f.add_argument("--dedup-db")
    f.add_argument("--backend-source", help=argparse.SUPPRESS)  # experimental snapshotter option; ignored
    s = p.add_argument_group("singleton")
    s.add_argument("-F", "--fscache")
    s.add_argument("--fscache-tag")
    s.add_argument("--fscache-threads", type=_threads, default=DEFAULT_THREADS)
    return p


def _split_mode(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Tuple[str, List[str]]:
    """Take the subcommand out of argv (it may come after global options)."""
    takes_value = {
        a
        for act in parser._actions
        for a in act.option_strings
        if act.nargs is None and not isinstance(act, (argparse._StoreTrueAction, argparse._HelpAction))
    }
    rest: List[str] = []
    mode: Optional[str] = None
    skip = False
    for a in argv:
        if skip:
            rest.append(a)
            skip = False
        elif a in takes_value:
            rest.append(a)
            skip = True
        elif mode is None and a in MODES:
            mode = a
        else:
            rest.append(a)
    return mode or "fuse", rest


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    mode, rest = _split_mode(parser, argv)
    a = parser.parse_args(rest)
    a.mode = mode
    if a.version:
        return a
    fail = parser.error
    if bool(a.id) != bool(a.supervisor):
        fail("--id and --supervisor must be given together")
    if mode == "fuse":
        for flag, value in (("--fscache", a.fscache), ("--fscache-tag", a.fscache_tag)):
            if value:
                fail(f"{flag} is a singleton option, not valid with fuse")
        if not a.mountpoint:
            fail("the following arguments are required: --mountpoint")
        if a.bootstrap and a.shared_dir:
            fail("--bootstrap conflicts with --shared-dir")
        if a.localfs_dir and a.config:
            fail("--localfs-dir conflicts with --config")
        if a.bootstrap and not (a.config or a.localfs_dir):
            fail("--bootstrap needs --config or --localfs-dir")
        if a.prefetch_files and not a.bootstrap:
            fail("--prefetch-files needs --bootstrap")
        if not a.virtual_mountpoint.startswith("/") or ".." in a.virtual_mountpoint.split("/"):
            fail(f"--virtual-mountpoint {a.virtual_mountpoint!r} must be an absolute path without '..'")
    else:
        for flag, value in (
            ("--mountpoint", a.mountpoint),
            ("--bootstrap", a.bootstrap),
            ("--shared-dir", a.shared_dir),
        ):
            if value:
                fail(f"{flag} is a fuse option, not valid with singleton")
        if a.fscache_tag and not a.fscache:
            fail("--fscache-tag needs --fscache")
    return a
