"""`nydus-hybrid devmapper` (also `python -m nydus_hybrid.devmapper`):

    serve --config devmapper.toml --address /run/devmapper.sock   # containerd's proxy snapshotter
    create-pool NAME --dir DIR [--data-size 1G] [--meta-size 64M] [--block-size 64K]
    remove-pool NAME [--dir DIR]
    status --config devmapper.toml [--json]

`create-pool` makes a thin pool on two sparse files over loop devices, for tests and trials
(containerd's devmapper snapshotter never creates its pool); `status` shows the pool's
usage and every device's state, id, usage and error, and the quarantined ids. A failure is
exit status 1 with a one-line reason (2 for bad arguments)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

from nydus_hybrid import log
from nydus_hybrid.devmapper import dmsetup
from nydus_hybrid.devmapper.config import load, parse_size
from nydus_hybrid.devmapper.dmsetup import DmError
from nydus_hybrid.devmapper.metadata import MetadataError, PoolMetadata
from nydus_hybrid.devmapper.pool import PoolError
from nydus_hybrid.snapshotter.config import ConfigError

DATA_FILE, META_FILE = "data", "meta"


def _losetup(*args: str) -> str:
    p = subprocess.run(["losetup", *args], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise OSError(f"losetup {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout.strip()


def create_pool(name: str, directory: str, data_size: int, meta_size: int, block_size: int) -> Dict[str, str]:
    """A thin pool `name` on sparse files `<dir>/data` and `<dir>/meta` over loop devices."""
    if block_size % 65536 or not 65536 <= block_size <= 1 << 30:
        raise ValueError("the block size must be a multiple of 64 KiB, up to 1 GiB")
    os.makedirs(directory, exist_ok=True)
    loops = {}
    try:
        for part, size in ((DATA_FILE, data_size), (META_FILE, meta_size)):
            path = os.path.join(directory, part)
            with open(path, "xb") as f:
                f.truncate(size)
            loops[part] = _losetup("--find", "--show", path)
        dmsetup.create_pool(name, loops[META_FILE], loops[DATA_FILE], data_size, block_size // dmsetup.SECTOR)
    except BaseException:
        for dev in loops.values():
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        for part in (DATA_FILE, META_FILE):
            if part not in loops:
                break
            os.unlink(os.path.join(directory, part))
        raise
    return {"pool": name, "data": loops[DATA_FILE], "meta": loops[META_FILE]}


def remove_pool(name: str, directory: Optional[str]) -> None:
    """Remove the pool, and with `directory` detach and delete its loop files."""
    dmsetup.remove(name, force=True, retry=True)
    if directory:
        for part in (DATA_FILE, META_FILE):
            path = os.path.join(directory, part)
            for line in _losetup("-j", path).splitlines():
                subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True)
            if os.path.exists(path):
                os.unlink(path)


def pool_status(pool: str) -> Dict[str, Any]:
    """The thin-pool target's status: transaction id, metadata and data blocks used/total,
    and whether it is writable."""
    s = dmsetup.status(pool)
    if s.target != "thin-pool" or len(s.params) < 4:
        raise ValueError(f"{pool} is not a thin pool ({s.target})")
    meta_used, meta_total = (int(x) for x in s.params[1].split("/"))
    data_used, data_total = (int(x) for x in s.params[2].split("/"))
    return {
        "transaction_id": int(s.params[0]),
        "metadata_blocks": {"used": meta_used, "total": meta_total},
        "data_blocks": {"used": data_used, "total": data_total},
        "mode": next((p for p in s.params[3:] if p in ("rw", "ro", "out_of_data_space")), ""),
    }


def status(config_path: str) -> Dict[str, Any]:
    cfg = load(config_path)
    md = PoolMetadata(os.path.join(cfg.root_path, f"{cfg.pool_name}.db"))
    try:
        devices: List[Dict[str, Any]] = []
        for d in md.walk_devices():
            usage: Optional[int] = None
            if dmsetup.is_loaded(d.name):
                try:
                    usage = dmsetup.mapped_bytes(d.name)
                except (DmError, ValueError):
                    usage = None
            devices.append(
                {
                    "name": d.name,
                    "id": d.device_id,
                    "size": d.size,
                    "parent": d.parent_name,
                    "state": str(d.state),
                    "error": d.error,
                    "usage": usage,
                }
            )
        faulty = md.faulty_ids()
    finally:
        md.close()
    return {"pool": cfg.pool_name, "status": pool_status(cfg.pool_name), "devices": devices, "faulty_ids": faulty}


def _serve(config_path: str, address: str) -> None:
    from nydus_hybrid.devmapper.snapshotter import DevmapperSnapshotter
    from nydus_hybrid.snapshotter.server import Server, prepare_socket, serve

    cfg = load(config_path)
    snapshotter = DevmapperSnapshotter(cfg)
    prepare_socket(address)
    serve(Server(address, snapshotter, root=cfg.root_path), every=0.0)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="nydus-hybrid devmapper", description="the devmapper snapshotter")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve containerd's Snapshots API on a unix socket")
    s.add_argument("--config", required=True, help="TOML with the devmapper plugin's keys")
    s.add_argument("--address", required=True, help="unix socket")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    c = sub.add_parser("create-pool", help="a thin pool on sparse loop files (tests and trials)")
    c.add_argument("name")
    c.add_argument("--dir", required=True, help="where the data and meta files go")
    c.add_argument("--data-size", default="1G")
    c.add_argument("--meta-size", default="64M")
    c.add_argument("--block-size", default="64K", help="the pool's block size (a multiple of 64K)")
    r = sub.add_parser("remove-pool", help="remove a pool (and, with --dir, its loop files)")
    r.add_argument("name")
    r.add_argument("--dir")
    st = sub.add_parser("status", help="the pool and its devices")
    st.add_argument("--config", required=True)
    st.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.cmd == "serve":
            log.setup(a.log_level)
            _serve(a.config, a.address)
        elif a.cmd == "create-pool":
            sizes = [parse_size(x) for x in (a.data_size, a.meta_size, a.block_size)]
            print(json.dumps(create_pool(a.name, a.dir, *sizes)))
        elif a.cmd == "remove-pool":
            remove_pool(a.name, a.dir)
        else:
            report = status(a.config)
            if a.json:
                print(json.dumps(report, indent=1))
            else:
                _print_status(report)
    except (ConfigError, DmError, PoolError, MetadataError, OSError, ValueError) as e:
        print(f"nydus-hybrid devmapper: error: {e}", file=sys.stderr)
        return 1
    return 0


def _print_status(report: Dict[str, Any]) -> None:
    st = report["status"]
    data, meta = st["data_blocks"], st["metadata_blocks"]
    print(f"pool {report['pool']}: data {data['used']}/{data['total']} blocks, metadata {meta['used']}/{meta['total']}")
    for d in report["devices"]:
        usage = "-" if d["usage"] is None else f"{d['usage']} B"
        print(f"  {d['name']:32} id {d['id']:<6} {d['state']:12} {usage:>14}  {d['error']}")
    if report["faulty_ids"]:
        print("  faulty ids: " + ", ".join(map(str, report["faulty_ids"])))
