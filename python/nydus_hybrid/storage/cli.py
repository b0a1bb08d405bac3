"""`nydus-hybrid storage` (the storage module from the command line):

    init --dir D --disks ssd:2,hdd:1 [--size 1G]     # sparse files on loop devices, for tests
    create NAME --size S --type ssd|hdd  COMMON
    release NAME  COMMON
    update NAME --size S  COMMON
    path NAME  COMMON
    list  COMMON
    total --type ssd|hdd  COMMON
    broken  COMMON
    monitor [--interval 5] [--count N]  COMMON

COMMON is ``--root DIR`` (where pools are mounted) and one ``--disk DEVICE:TYPE`` per disk,
with ``--raid single|raid1|raid10``, ``--disks-per-pool N`` and ``--max-pools N`` for the
policy; the module keeps no other configuration, its state is on the disks. ``init`` prints
one ``DEVICE:TYPE`` line per disk, ready for ``--disk``. Sizes take a K/M/G/T suffix
(powers of 1024). ``--json`` prints JSON. A failure is exit status 1 with a one-line
reason, bad arguments exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from nydus_hybrid.storage.errors import StorageError
from nydus_hybrid.storage.module import StorageModule
from nydus_hybrid.storage.policy import DiskType, StoragePolicy

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``16M`` → 16 MiB; a positive number of bytes, else ``ValueError``."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in UNITS and not t[-1:].isdigit() else ""
    number = t[: len(t) - len(unit)]
    if not number.isdigit() or int(number) <= 0:
        raise ValueError(f"size {text!r}: not a positive size like 512M or 1G")
    return int(number) * UNITS[unit]


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _disk(text: str) -> Tuple[str, str]:
    path, sep, kind = text.rpartition(":")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"disk {text!r}: expected DEVICE:TYPE")
    return path, kind


def _disk_counts(text: str) -> List[Tuple[DiskType, int]]:
    found = []
    for part in text.split(","):
        kind, sep, count = part.partition(":")
        try:
            found.append((DiskType(kind), int(count) if sep else 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"disks {part!r}: expected ssd:N or hdd:N") from None
    return found


def _losetup(*args: str) -> str:
    p = subprocess.run(["losetup", *args], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise StorageError(f"losetup {' '.join(args)}: {' '.join(p.stderr.split())}")
    return p.stdout.strip()


def init_disks(directory: str, counts: Sequence[Tuple[DiskType, int]], size: int) -> List[Dict[str, str]]:
    """Sparse files of ``size`` bytes in ``directory`` on new loop devices; all or none."""
    os.makedirs(directory, exist_ok=True)
    made: List[Dict[str, str]] = []
    try:
        for kind, count in counts:
            for i in range(count):
                path = os.path.join(directory, f"{kind.value}{i}.img")
                with open(path, "xb") as f:
                    f.truncate(size)
                made.append({"file": path, "type": kind.value, "device": ""})
                made[-1]["device"] = _losetup("--find", "--show", path)
    except (OSError, StorageError):
        for d in made:
            if d["device"]:
                subprocess.run(["losetup", "-d", d["device"]], capture_output=True)
            os.unlink(d["file"])
        raise
    return made


def common_options() -> argparse.ArgumentParser:
    """COMMON: the options that open the module (`open_module`), shared with `flist`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", required=True, help="where the pools are mounted")
    common.add_argument("--disk", action="append", type=_disk, default=[], metavar="DEVICE:TYPE")
    common.add_argument("--raid", default="single", choices=["single", "raid1", "raid10"])
    common.add_argument("--disks-per-pool", type=int, default=1)
    common.add_argument("--max-pools", type=int, default=0)
    common.add_argument("--json", action="store_true")
    return common


def open_module(a: argparse.Namespace) -> StorageModule:
    policy = StoragePolicy(raid=a.raid, disks_per_pool=a.disks_per_pool, max_pools=a.max_pools)
    return StorageModule(a.root, a.disk, policy)


def make_parser() -> argparse.ArgumentParser:
    common = common_options()
    p = argparse.ArgumentParser(prog="nydus-hybrid storage", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("init", help="sparse files on loop devices, for tests")
    s.add_argument("--dir", required=True)
    s.add_argument("--disks", required=True, type=_disk_counts, help="e.g. ssd:2,hdd:1")
    s.add_argument("--size", type=_size, default=1 << 30)
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("create", parents=[common])
    s.add_argument("name")
    s.add_argument("--size", type=_size, required=True)
    s.add_argument("--type", default="ssd")
    for name in ("release", "path"):
        sub.add_parser(name, parents=[common]).add_argument("name")
    s = sub.add_parser("update", parents=[common])
    s.add_argument("name")
    s.add_argument("--size", type=_size, required=True)
    sub.add_parser("list", parents=[common])
    sub.add_parser("total", parents=[common]).add_argument("--type", default="ssd")
    sub.add_parser("broken", parents=[common])
    s = sub.add_parser("monitor", parents=[common])
    s.add_argument("--interval", type=float, default=5.0)
    s.add_argument("--count", type=int, default=0, help="stop after N snapshots (0: never)")
    return p


def _jsonable(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def show(a: argparse.Namespace, value: Any, text: str) -> None:
    if a.json:
        print(json.dumps(_jsonable(value) if not isinstance(value, list) else [_jsonable(v) for v in value]))
    elif text:
        print(text)


def _run(a: argparse.Namespace) -> int:
    if a.command == "init":
        made = init_disks(a.dir, a.disks, a.size)
        show(a, made, "\n".join(f"{d['device']}:{d['type']}" for d in made))
        return 0
    mod = open_module(a)
    if a.command == "create":
        fs = mod.create_filesystem(a.name, a.size, a.type)
        show(a, fs, fs.path)
    elif a.command == "release":
        mod.release_filesystem(a.name)
    elif a.command in ("update", "path"):
        fs = mod.update_filesystem(a.name, a.size) if a.command == "update" else mod.path(a.name)
        show(a, fs, fs.path)
    elif a.command == "list":
        listed = mod.list_filesystems()
        show(
            a,
            listed,
            "\n".join(f"{f.name}\t{f.disk_type.value}\t{f.usage.size}\t{f.usage.used}\t{f.path}" for f in listed),
        )
    elif a.command == "total":
        print(mod.total(a.type))
    elif a.command == "broken":
        pools, devices = mod.broken_pools(), mod.broken_devices()
        if a.json:
            print(json.dumps({"pools": pools, "devices": devices}))
        else:
            for kind, found in (("pool", pools), ("device", devices)):
                for what, err in found:
                    print(f"{kind}\t{what}\t{err}")
    else:
        for n, snapshot in enumerate(mod.monitor(a.interval), 1):
            show(
                a,
                snapshot,
                "\n".join(f"{s.label}\t{s.disk_type.value}\t{s.size}\t{s.used}\t{s.reserved}" for s in snapshot),
            )
            sys.stdout.flush()
            if n == a.count:
                break
    return 0


def run_command(prog: str, run: Callable[[argparse.Namespace], int], a: argparse.Namespace) -> int:
    """One command of `storage` or `flist`: a failure is one line on stderr and exit 1."""
    try:
        return run(a)
    except (StorageError, OSError) as e:
        print(f"{prog}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command("nydus-hybrid storage", _run, make_parser().parse_args(argv))
