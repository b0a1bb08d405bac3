"""OCI layers for the conversion tests: the rootfs a stack of layer tarballs flattens to
(what a Nydus image made from them must serve: `nydus_hybrid.convert.flatten`, GNU tar
doing the extracting), an OCI image layout written from tarballs, and a Debian-based
stack of layers."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from nydus_hybrid.convert import oci
from nydus_hybrid.convert.flatten import flatten

__all__ = ["debian_layers", "flatten", "tar_dir", "write_layout"]


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


DEBIAN_BASE = Path(os.path.expanduser("~/.cache/nydus-hybrid/debian-minbase.tar"))


def debian_base() -> Path:
    """A Debian bookworm minbase root filesystem as one layer tarball (mmdebstrap from
    Debian's packages), made once and cached."""
    if not DEBIAN_BASE.exists():
        DEBIAN_BASE.parent.mkdir(parents=True, exist_ok=True)
        tmp = DEBIAN_BASE.with_suffix(".part.tar")
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--mode=root", "-q", "bookworm", str(tmp)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tmp.rename(DEBIAN_BASE)
    return DEBIAN_BASE


def tar_dir(root: Path, out: Path) -> Path:
    """A layer tarball of a directory, xattrs and all (GNU tar, as image builders use)."""
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", str(root), "-cf", str(out), "."], check=True)
    return out


def debian_layers(tmp: Path) -> List[Path]:
    """Three layers over the Debian base: one adds an application and changes and deletes
    files, one replaces a directory with an opaque whiteout, one deletes a file of the
    layer below and adds links and an xattr."""
    app = tmp / "l-app"
    (app / "opt/app/lib").mkdir(parents=True)
    (app / "opt/app/data.bin").write_bytes(os.urandom(3 << 20))
    (app / "opt/app/lib/small.txt").write_bytes(b"small\n" * 100)
    (app / "opt/app/remove-me").write_bytes(b"gone in the top layer\n")
    (app / "etc").mkdir()
    (app / "etc/debian_version").write_bytes(b"changed by the app layer\n")
    (app / "etc/.wh.issue.net").write_bytes(b"")
    (app / "usr/bin").mkdir(parents=True)
    (app / "usr/bin/.wh.tac").write_bytes(b"")
    opq = tmp / "l-opaque"
    (opq / "usr/share/doc").mkdir(parents=True)
    (opq / "usr/share/doc/.wh..wh..opq").write_bytes(b"")
    (opq / "usr/share/doc/README").write_bytes(b"the docs were replaced\n")
    top = tmp / "l-top"
    (top / "opt/app").mkdir(parents=True)
    (top / "opt/app/.wh.remove-me").write_bytes(b"")
    (top / "opt/app/hello").write_bytes(b"hello from the top layer\n")
    os.link(top / "opt/app/hello", top / "opt/app/hello-link")
    os.symlink("../app/hello", top / "opt/app/hello-sym")
    os.setxattr(top / "opt/app/hello", "user.origin", b"top")
    return [debian_base(), *(tar_dir(d, tmp / f"{d.name}.tar") for d in (app, opq, top))]


def push_debian_nydus(tmp: Path, ref: str, creds: Optional[str] = None) -> str:
    """The Debian base as a one-layer OCI layout under `tmp` (made once), converted to
    Nydus and pushed to `ref` in a plain-http registry; returns `ref`."""
    from nydus_hybrid.convert.convert import ConvertOptions, convert
    from nydus_hybrid.convert.store import open_source, open_target

    layout = tmp / "oci-debian"
    if not (layout / "index.json").exists():
        write_layout(layout, [debian_base()], ["gzip"])
    convert(open_source(f"oci:{layout}"), open_target(ref, plain_http=True, creds=creds), ConvertOptions())
    return ref
