#!/usr/bin/env python3
"""The devmapper snapshotter against our overlayfs snapshots, on the same layers in the same
VM (the test kernel has device-mapper thin pools; this machine's kernel does not):

    python benches/vm_devmapper.py [--depths 1,8,32,128]

For each depth N, both snapshotters build a chain of N layers: Prepare (for devmapper a thin
device, with mkfs for the first layer, a thin snapshot for the others), mount, write one
small file, unmount, Commit. Reported per snapshotter: the first layer's Prepare (+ mkfs)
and Commit, and Prepare and Commit at the top of the chain (how creation time grows as
layers stack up), medians of the last few layers. The VM runs under software emulation: the
figures are many times the host's; compare the two snapshotters with each other."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

SHARED = Path("/tmp/nh-devmapper-bench")
TOP = 4  # layers at the top of a chain whose times are the "at depth N" figures


def chain(
    prepare: Callable[[str, str], List[Any]], commit: Callable[[str, str], None], work: Path, n: int, tag: str
) -> Dict[str, float]:
    from tests.helpers.snapshots import mount_all, umount

    prep, comm = [], []
    parent = ""
    for i in range(n):
        key, name = f"{tag}-a{i}", f"{tag}-l{i}"
        t0 = time.perf_counter()
        mounts = prepare(key, parent)
        prep.append(time.perf_counter() - t0)
        target = work / f"m-{tag}"
        target.mkdir(parents=True, exist_ok=True)
        mount_all(mounts, target)
        (target / f"f{i}").write_text(str(i))
        umount(target)
        t0 = time.perf_counter()
        commit(name, key)
        comm.append(time.perf_counter() - t0)
        parent = name
    return {
        "first_prepare_s": prep[0],
        "first_commit_s": comm[0],
        "top_prepare_s": statistics.median(prep[-TOP:]),
        "top_commit_s": statistics.median(comm[-TOP:]),
        "total_s": sum(prep) + sum(comm),
    }


def guest(depths: List[int]) -> int:
    from nydus_hybrid.devmapper import cli
    from nydus_hybrid.devmapper.config import from_dict
    from nydus_hybrid.devmapper.snapshotter import DevmapperSnapshotter
    from nydus_hybrid.snapshotter.snapshot import Snapshotter

    sh = lambda *a: subprocess.run(a, check=True)  # noqa: E731
    sh("mount", "-t", "tmpfs", "none", "/mnt")
    sh("truncate", "-s", "3G", "/mnt/ext4.img")
    sh("mkfs.ext4", "-q", "/mnt/ext4.img")
    work = Path("/mnt/w")
    work.mkdir()
    sh("mount", "-o", "loop", "/mnt/ext4.img", str(work))
    rows = []
    for n in depths:
        pool = f"nhbench-{n}"
        cli.create_pool(pool, str(work / f"pool-{n}"), 2 << 30, 128 << 20, 64 << 10)
        dm = DevmapperSnapshotter(
            from_dict({"root_path": str(work / f"dm-{n}"), "pool_name": pool, "base_image_size": "64MB"})
        )
        ov = Snapshotter(str(work / f"ov-{n}"))
        try:
            for kind, sn in (("devmapper", dm), ("overlayfs", ov)):
                r = chain(
                    lambda k, p, sn=sn: sn.prepare(k, p, {}),
                    lambda name, k, sn=sn: sn.commit(name, k, {}),
                    work,
                    n,
                    f"{kind}{n}",
                )
                rows.append({"snapshotter": kind, "layers": n, **r})
                print(rows[-1], flush=True)
        finally:
            dm.reset_pool()
            dm.close()
            ov.close()
            cli.remove_pool(pool, str(work / f"pool-{n}"))
    (SHARED / "results.json").write_text(json.dumps(rows))
    return 0


def host(depths: str, json_out: str) -> int:
    from tests.helpers import vm

    why = vm.missing()
    if why:
        print(f"vm_devmapper: {why}", file=sys.stderr)
        return 2
    SHARED.mkdir(parents=True, exist_ok=True)
    results = SHARED / "results.json"
    results.unlink(missing_ok=True)
    r = vm.run(["python3", "benches/vm_devmapper.py", "--guest", "--depths", depths], timeout=5400)
    if r.returncode != 0 or not results.exists():
        print(r.output[-6000:], file=sys.stderr)
        return 1
    rows = json.loads(results.read_text())
    head = ["layers", "snapshotter", "first Prepare (+mkfs)", "first Commit", "Prepare at the top"]
    print("| " + " | ".join([*head, "Commit at the top", "chain total"]) + " |")
    print("|---" * 7 + "|")
    for x in rows:
        ms = [f"{x[f] * 1e3:.0f} ms" for f in ("first_prepare_s", "first_commit_s", "top_prepare_s", "top_commit_s")]
        print("| " + " | ".join([str(x["layers"]), x["snapshotter"], *ms, f"{x['total_s']:.1f} s"]) + " |")
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=1))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default="1,8,32,128")
    p.add_argument("--json", default="")
    p.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.guest:
        return guest([int(x) for x in a.depths.split(",")])
    return host(a.depths, a.json)


if __name__ == "__main__":
    sys.exit(main())
