#!/usr/bin/env python3
"""Container cold start on the test kernel, which has cachefiles on-demand: the contenders of
`test_coldstart.py` plus the snapshotter's `fscache` fs driver (EROFS over fscache), with
the real nydusd and with our daemon, side by side in one VM (../shared/kernels/README.md).

    python benches/vm_coldstart.py [--contenders oci,nydus-ref,ours,nydus-ref-fscache,ours-fscache]

The host converts and publishes the images into a registry's storage under /tmp (which the
guest can write); the guest serves that storage with its own docker-registry on loopback
and runs each cold start on an ext4 it makes in memory (cachefiles refuses 9p). The VM runs
under software emulation, so every figure is many times the host's: compare the contenders
with each other, not with `test_coldstart.py`'s. Prints a markdown table; `--json` keeps it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: tests.helpers
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benches/: benchlib

from benchlib import coldstart as cs

SHARED = Path("/tmp/nhcold-vm")
CONTENDERS = "oci,nydus-ref,ours,nydus-ref-fscache,ours-fscache"
LOOPBACK = cs.Link("loopback", None)


def host(contenders: str, json_out: str) -> int:
    from tests.helpers import vm

    why = vm.missing()
    if why:
        print(f"vm_coldstart: {why}", file=sys.stderr)
        return 2
    SHARED.mkdir(parents=True, exist_ok=True)
    registry = cs.Registry(SHARED, LOOPBACK)
    try:
        images = cs.publish(registry, SHARED)
    finally:
        registry.close()
    (SHARED / "images.json").write_text(json.dumps({**images, "host": registry.host}))
    results = SHARED / "results.json"
    results.unlink(missing_ok=True)
    os.environ.setdefault("NYDUS_VM_MEMORY", "6G")
    argv = ["python3", "benches/vm_coldstart.py", "--guest", "--contenders", contenders]
    r = vm.run(argv, timeout=5600)
    if r.returncode != 0 or not results.exists():
        print(r.output[-6000:], file=sys.stderr)
        return 1
    rows: List[Dict[str, Any]] = json.loads(results.read_text())
    oci = next((x for x in rows if x["contender"] == "oci"), None)
    print("| contender | pull | python first output | node first output | total | vs OCI | requests | fetched |")
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        ratio = f"{x['total_s'] / oci['total_s']:.2f}x" if oci else "-"
        print(
            f"| {x['contender']} | {x['pull_s']:.2f} s | {x['python_first_output_s']:.2f} s | "
            f"{x['node_first_output_s']:.2f} s | {x['total_s']:.2f} s | {ratio} | {x['requests']} | "
            f"{x['fetched_bytes'] / 1e6:.1f} MB of {x['image_bytes'] / 1e6:.1f} MB |"
        )
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=1))
    return 0


def guest(contenders: str) -> int:
    # A writable ext4 in memory: the guest sees the host's files over 9p, where cachefiles
    # refuses a cache directory and no unix socket can be bound.
    work = Path("/mnt/w")
    sh = lambda *a: subprocess.run(a, check=True)  # noqa: E731
    sh("mount", "-t", "tmpfs", "none", "/mnt")
    sh("truncate", "-s", "3G", "/mnt/ext4.img")
    sh("mkfs.ext4", "-q", "/mnt/ext4.img")
    work.mkdir()
    sh("mount", "-o", "loop", "/mnt/ext4.img", str(work))
    images = json.loads((SHARED / "images.json").read_text())
    registry = cs.Registry(SHARED, LOOPBACK)  # the host's storage, on a port of the guest's
    old = images.pop("host")
    images = {
        "oci": images["oci"].replace(old, registry.host),
        "nydus": images["nydus"].replace(old, registry.host),
        "sizes": {k.replace(old, registry.host): v for k, v in images["sizes"].items()},
    }
    rows = []
    try:
        for contender in contenders.split(","):
            r = cs.cold_start(contender, LOOPBACK, registry, images, work)
            assert r.outputs[0].startswith("requests ") and r.outputs[1].startswith("node v"), r.outputs
            rows.append({**dataclasses.asdict(r), "total_s": r.total_s})
            print(contender, rows[-1], flush=True)
    finally:
        registry.close()
    (SHARED / "results.json").write_text(json.dumps(rows))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contenders", default=CONTENDERS)
    p.add_argument("--json", default="", help="also write the rows here")
    p.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)  # in the VM
    a = p.parse_args()
    if a.guest:
        # Under emulation an interpreter takes seconds to start: stretch the helpers' waits.
        os.environ["NYDUS_HYBRID_WAIT_SCALE"] = "8"
        return guest(a.contenders)
    return host(a.contenders, a.json)


if __name__ == "__main__":
    sys.exit(main())
