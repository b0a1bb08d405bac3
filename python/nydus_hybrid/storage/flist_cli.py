"""`nydus-hybrid flist` (zos's flist module from the command line):

    mount NAME URL [--read-only] [--limit 256M] [--storage URL] [--persisted-volume V] [--type ssd]  COMMON
    umount NAME  COMMON
    resize NAME --limit S  COMMON
    list  COMMON
    hash (URL | --name NAME)  COMMON
    gc  COMMON
    clean-cache --max-age SECONDS  COMMON

COMMON is the storage module's (``nydus-hybrid storage --help``: ``--root`` and the
``--disk`` list, whose pools give the writable layers) plus ``--flist-root DIR`` (default
``/var/cache/modules/flist``) and ``--default-storage URL``. A failure is exit status 1 with
a one-line reason, bad arguments exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from nydus_hybrid.storage.cli import _size, common_options, open_module, run_command, show
from nydus_hybrid.storage.flist import DEFAULT_LIMIT, Flister, MountOptions
from nydus_hybrid.storage.policy import DiskType

DEFAULT_ROOT = "/var/cache/modules/flist"


def make_parser() -> argparse.ArgumentParser:
    common = common_options()
    common.add_argument("--flist-root", default=DEFAULT_ROOT)
    common.add_argument("--default-storage", default="", help="storage URL when a mount names none")
    p = argparse.ArgumentParser(prog="nydus-hybrid flist", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("mount", parents=[common])
    s.add_argument("name")
    s.add_argument("url")
    s.add_argument("--read-only", action="store_true")
    s.add_argument("--limit", type=_size, default=DEFAULT_LIMIT)
    s.add_argument("--storage", default="")
    s.add_argument("--persisted-volume", default="")
    s.add_argument("--type", default="ssd")
    sub.add_parser("umount", parents=[common]).add_argument("name")
    s = sub.add_parser("resize", parents=[common])
    s.add_argument("name")
    s.add_argument("--limit", type=_size, required=True)
    sub.add_parser("list", parents=[common])
    s = sub.add_parser("hash", parents=[common])
    s.add_argument("url", nargs="?")
    s.add_argument("--name")
    sub.add_parser("gc", parents=[common])
    sub.add_parser("clean-cache", parents=[common]).add_argument("--max-age", type=int, required=True)
    return p


def _run(a: argparse.Namespace) -> int:
    fl = Flister(a.flist_root, open_module(a), a.default_storage)
    if a.command == "mount":
        opts = MountOptions(
            read_only=a.read_only,
            limit=a.limit,
            storage=a.storage,
            persisted_volume=a.persisted_volume,
            disk_type=DiskType.parse(a.type),
        )
        path = fl.mount(a.name, a.url, opts)
        show(a, {"name": a.name, "path": path}, path)
    elif a.command == "umount":
        fl.unmount(a.name)
    elif a.command == "resize":
        fs = fl.update_mount_size(a.name, a.limit)
        show(a, fs, fs.path)
    elif a.command == "list":
        listed = fl.list()
        show(a, listed, "\n".join(f"{m['name']}\t{m['hash']}\t{m['volume'] or '-'}\t{m['path']}" for m in listed))
    elif a.command == "hash":
        if bool(a.url) == bool(a.name):
            print("nydus-hybrid flist: hash takes a URL or --name, one of them", file=sys.stderr)
            return 2
        value = fl.hash_from_root_path(a.name) if a.name else fl.flist_hash(a.url)
        show(a, {"hash": value}, value)
    elif a.command == "gc":
        stopped = fl.gc()
        show(a, stopped, "\n".join(stopped))
    else:
        report = fl.clean_cache(a.max_age)
        show(a, report, " ".join(f"{k}={v}" for k, v in report.items()))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command("nydus-hybrid flist", _run, make_parser().parse_args(argv))
