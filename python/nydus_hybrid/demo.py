"""`nydus-hybrid demo`: the product's main job on a built-in default, on 127.0.0.1.

It starts a registry, our snapshotter and a containerd that uses it. It builds a small OCI
image (this machine's Python interpreter, the libraries it links and its standard library)
and converts it into a Nydus image in the registry. Then it pulls the Nydus image
lazily into containerd (no data blob is downloaded), runs a container from it with runc,
and prints what the registry served against the image's size and the time to the
container's first output. Everything it started is stopped and removed at the end."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from nydus_hybrid import log
from nydus_hybrid.containerd.client import Client
from nydus_hybrid.containerd.pull import Puller
from nydus_hybrid.convert import oci
from nydus_hybrid.convert.convert import ConvertOptions, convert
from nydus_hybrid.convert.layout import Layout
from nydus_hybrid.convert.reference import parse_registry
from nydus_hybrid.convert.registry import Registry
from nydus_hybrid.convert.store import open_source, open_target
from nydus_hybrid.demo_stack import SNAPSHOTTER_NAME, LocalContainerd, LocalRegistry, LocalSnapshotter

COMMAND = [
    "-c",
    "import json, email.parser, http.client, argparse, sys; "
    "print('hello from a lazily pulled image: Python', sys.version.split()[0])",
]
SKIP_DIRS = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip"}


def _linked(binary: str) -> List[str]:
    """The shared objects `binary` loads, the dynamic loader included (from ldd)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    paths = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            paths.append(parts[2])
        elif parts and parts[0].startswith("/"):
            paths.append(parts[0])
    return paths


def default_tree(dest: Path) -> Path:
    """A root filesystem that runs this machine's Python: the interpreter at its own path,
    the libraries it links, and the standard library (less its tests and GUI)."""
    exe = os.path.realpath(sys.executable)
    stdlib = sysconfig.get_paths()["stdlib"]
    files = [exe, *_linked(exe)]
    dynload = os.path.join(stdlib, "lib-dynload")
    if os.path.isdir(dynload):
        for name in os.listdir(dynload):
            files.extend(_linked(os.path.join(dynload, name)))
    for f in sorted(set(files)):
        target = dest / f.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(f), target)
    (dest / "usr/bin").mkdir(parents=True, exist_ok=True)
    if not (dest / "usr/bin/python3").exists():
        os.symlink(exe, dest / "usr/bin/python3")
    shutil.copytree(
        stdlib, dest / stdlib.lstrip("/"), symlinks=True, ignore=lambda d, names: [n for n in names if n in SKIP_DIRS]
    )
    for d in ("tmp", "etc", "proc", "sys", "dev"):
        (dest / d).mkdir(exist_ok=True)
    (dest / "etc/os-release").write_text('NAME="nydus-hybrid demo"\n')
    return dest


def write_oci_image(tree: Path, layout_dir: Path, tag: str) -> Dict[str, Any]:
    """`tree` as a one-layer OCI image (tar+gzip) in an OCI layout; returns its config."""
    layer = layout_dir.parent / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as t:
        for p in sorted(tree.rglob("*")):
            t.add(p, arcname=str(p.relative_to(tree)), recursive=False)
    diff_id = oci.sha256_digest(layer.read_bytes())
    gz = layer.with_suffix(".tar.gz")
    gz.write_bytes(gzip.compress(layer.read_bytes(), 6))
    out = Layout(layout_dir, tag)
    digest = oci.sha256_digest(gz.read_bytes())
    out.put_file(gz, digest)
    config = {
        "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
        "os": "linux",
        "config": {
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu",
            ],
            "Cmd": ["/usr/bin/python3", *COMMAND],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    cdata = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.MANIFEST,
        "config": {"mediaType": oci.CONFIG, "digest": out.put(cdata), "size": len(cdata)},
        "layers": [{"mediaType": oci.LAYER_TAR_GZIP, "digest": digest, "size": gz.stat().st_size}],
    }
    mdata = json.dumps(manifest).encode()
    out.put_manifest(mdata, oci.MANIFEST)
    out.publish(mdata, oci.MANIFEST)
    layer.unlink()
    gz.unlink()
    return config


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_demo(workdir: Optional[str] = None, keep: bool = False, registry_kind: str = "auto") -> int:
    if os.geteuid() != 0:
        _say("nydus-hybrid: error: the demo mounts images and runs a container: run it as root")
        return 1
    work = workdir or tempfile.mkdtemp(prefix="nydus-hybrid-demo-")
    os.makedirs(work, exist_ok=True)
    work = os.path.realpath(work)
    log.event("demo.start", workdir=work)
    registry = snapshotter = containerd = None
    summary: Dict[str, Any] = {}
    try:
        LocalSnapshotter(work, "")  # checks the work directory's length before the long steps
        t0 = time.perf_counter()
        tree = default_tree(Path(work) / "tree")
        write_oci_image(tree, Path(work) / "oci", "demo")
        shutil.rmtree(tree)
        registry = LocalRegistry(work, registry_kind).start()
        _say(f"registry ({registry.kind}) on {registry.host}")
        nydus_ref = f"{registry.host}/demo:nydus"
        convert(
            open_source(f"oci:{Path(work) / 'oci'}:demo"),
            open_target(nydus_ref, plain_http=True),
            ConvertOptions(progress=_say),
        )
        summary["build_and_convert_seconds"] = round(time.perf_counter() - t0, 2)
        snapshotter = LocalSnapshotter(work, registry.host).start()
        containerd = LocalContainerd(work, snapshotter.address).start()
        _say(f"containerd on {containerd.address}, snapshotter {SNAPSHOTTER_NAME} on {snapshotter.address}")

        served_before = len(registry.served())
        t0 = time.perf_counter()
        nydus_source = Registry(parse_registry(nydus_ref), plain_http=True)
        with Client(containerd.address) as client:
            report = Puller(client, nydus_source, SNAPSHOTTER_NAME, progress=_say).pull()
        pull_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        argv = containerd.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER_NAME, nydus_ref, "demo")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        first_s = time.perf_counter() - t0
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or not first:
            _say(f"nydus-hybrid: error: the container failed ({proc.returncode}): {err.strip()[-500:]}")
            return 1
        served = registry.served()[served_before:]
        blob_bytes = sum(int(d["size"]) for d in json.loads(nydus_source.root()[1])["layers"])
        summary.update(
            {
                "container_output": first,
                "image": nydus_ref,
                "image_blob_bytes": blob_bytes,
                "fetched_bytes": sum(n for _, _, _, n in served),
                "fetched_requests": len(served),
                "ranged_blob_requests": sum(1 for _, p, s, _ in served if "/blobs/" in p and s == 206),
                "lazy_layers": sum(x.lazy for x in report.layers),
                "pull_seconds": round(pull_s, 3),
                "time_to_first_output_seconds": round(first_s, 3),
            }
        )
        summary["fetched_percent"] = round(100 * summary["fetched_bytes"] / max(1, blob_bytes), 1)
        print(json.dumps(summary, indent=2), flush=True)
        _say(
            f"the container printed {first!r} {first_s:.2f} s after ctr run; "
            f"{summary['fetched_bytes']} of {blob_bytes} image bytes fetched ({summary['fetched_percent']}%)"
        )
        return 0
    finally:
        for service in (containerd, snapshotter, registry):
            if service is not None:
                service.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
