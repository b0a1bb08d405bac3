"""OCI layers for the conversion tests: the rootfs a stack of layer tarballs flattens to
(what a Nydus image made from them must serve), and an OCI image layout written from
tarballs."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Dict, List

from nydus_hybrid.convert import oci


def flatten(tars: List[Path], out: Path) -> None:
    """The OCI rootfs of `tars` (lowest first): each layer's whiteouts, then its entries. A
    directory a layer declares again takes that layer's metadata whole, xattrs too, as
    nydus-image merge has it (containerd's unpacker would keep the lower xattrs)."""
    out.mkdir()
    for t in tars:
        with tarfile.open(t) as tf:
            members = tf.getmembers()
            for m in members:
                d, base = os.path.split(os.path.normpath(m.name))
                target = out / d
                if base == ".wh..wh..opq":
                    for c in target.iterdir():
                        shutil.rmtree(c) if c.is_dir() and not c.is_symlink() else c.unlink()
                elif base.startswith(".wh."):
                    victim = target / base[4:]
                    shutil.rmtree(victim) if victim.is_dir() and not victim.is_symlink() else victim.unlink()
                elif m.isdir() and (out / m.name).is_dir():
                    for x in os.listxattr(out / m.name):
                        os.removexattr(out / m.name, x)
        # GNU tar restores what Python's tarfile does not: xattrs, symlink times, ns times.
        subprocess.run(
            [
                *("tar", "-C", str(out), "--xattrs", "--xattrs-include=*"),
                "--numeric-owner",
                "-xpf",
                str(t),
                "--exclude=.wh.*",
            ],
            check=True,
        )


def write_layout(root: Path, tars: List[Path], compressions: List[str]) -> Dict[str, Any]:
    """An OCI image layout at `root` holding one image of `tars` (lowest first), each
    stored as "tar", "gzip" or "zstd"; returns its config."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers, diff_ids = [], []
    for t, how in zip(tars, compressions):
        raw = t.read_bytes()
        diff_ids.append(oci.sha256_digest(raw))
        if how == "gzip":
            data, media = gzip.compress(raw), oci.LAYER_TAR_GZIP
        elif how == "zstd":
            data = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
            media = "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            data, media = raw, "application/vnd.oci.image.layer.v1.tar"
        d = oci.descriptor(media, data)
        (blobs / d["digest"][7:]).write_bytes(data)
        layers.append(d)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(tars))],
    }
    cfg = oci.canonical(config)
    (blobs / oci.sha256_digest(cfg)[7:]).write_bytes(cfg)
    m = oci.canonical(
        {"schemaVersion": 2, "mediaType": oci.MANIFEST, "config": oci.descriptor(oci.CONFIG, cfg), "layers": layers}
    )
    (blobs / oci.sha256_digest(m)[7:]).write_bytes(m)
    entry = oci.descriptor(oci.MANIFEST, m, platform={"architecture": "amd64", "os": "linux"})
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return config
