"""Convert an OCI image in a layout directory to a Nydus image in another (or the same)
layout directory: each layer becomes a layer blob carrying its bootstrap (in parallel: the
builds release the GIL and stream their input), the layer bootstraps are merged, and the
bootstrap layer, config and manifest are written; blobs first, `index.json` last."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from nydus_hybrid.builder import build, merge
from nydus_hybrid.convert import manifest, oci
from nydus_hybrid.convert.layout import Layout
from nydus_hybrid.errors import InvalidArgumentError

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


@dataclass
class LayerReport:
    source: str  # the source layer's digest
    blob: str  # the Nydus layer blob's digest
    source_size: int
    blob_size: int
    seconds: float


@dataclass
class ConvertReport:
    manifest: str  # the Nydus manifest's digest
    bootstrap_size: int
    seconds: float
    layers: List[LayerReport] = field(default_factory=list)


def _pick_manifest(src: Layout, platform: Optional[str]) -> Dict[str, Any]:
    """The image manifest to convert: the index's only one, or the one for `platform`
    (os/arch), following one level of nested index."""
    entries = [m for m in src.index().get("manifests", []) if isinstance(m, dict)]
    if len(entries) == 1 and entries[0].get("mediaType") in (oci.INDEX, oci.DOCKER_MANIFEST_LIST):
        entries = [m for m in src.document(entries[0]).get("manifests", []) if isinstance(m, dict)]
    if platform:
        want_os, _, want_arch = platform.partition("/")
        entries = [
            m
            for m in entries
            if m.get("platform", {}).get("os") == want_os and m.get("platform", {}).get("architecture") == want_arch
        ]
    entries = [m for m in entries if oci.NYDUS_OS_FEATURE not in m.get("platform", {}).get("os.features", [])]
    if len(entries) != 1:
        raise InvalidArgumentError(
            errno.EINVAL, f"the source holds {len(entries)} matching image manifests; name one with --platform os/arch"
        )
    return entries[0]


def convert_layout(
    source: Union[str, os.PathLike[str]],
    target: Union[str, os.PathLike[str]],
    *,
    platform: Optional[str] = None,
    chunk_size: int = 0x100000,
    compressor: str = "zstd",
    threads: int = 4,
    tag: Optional[str] = None,
) -> ConvertReport:
    t0 = time.monotonic()
    src, dst = Layout(source), Layout(target)
    entry = _pick_manifest(src, platform)
    m = src.document(entry)
    config = src.document(m["config"])
    layers = m.get("layers", [])
    for d in layers:
        if d.get("mediaType") not in LAYER_TYPES:
            raise InvalidArgumentError(
                errno.EINVAL, f"layer {d.get('digest')}: media type {d.get('mediaType')!r} cannot be converted"
            )
    # Temporaries next to the target, so finished blobs move in by rename or link.
    Path(target).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".nydus-convert-", dir=target))
    try:

        def one(i: int) -> LayerReport:
            t = time.monotonic()
            path = src.layer(layers[i])
            r = build(
                path,
                None,
                work / f"layer{i}",
                inline_bootstrap=True,
                whiteout_spec="none",
                chunk_size=chunk_size,
                compressor=compressor,
                progress=False,
            )
            assert r.blob_path is not None and r.blob_id is not None
            return LayerReport(
                layers[i]["digest"], "sha256:" + r.blob_id, path.stat().st_size, r.blob_size, time.monotonic() - t
            )

        with ThreadPoolExecutor(max(1, threads)) as ex:
            reports = list(ex.map(one, range(len(layers))))
        blobs = [work / f"layer{i}" / r.blob.partition(":")[2] for i, r in enumerate(reports)]
        boot = work / "image.boot"
        merge(blobs, boot)
        boot_layer, diff_id = manifest.bootstrap_layer(boot.read_bytes())
        descs = [manifest.blob_layer_of(b, r.blob) for b, r in zip(blobs, reports)]
        descs.append(manifest.bootstrap_descriptor(boot_layer, diff_id))
        cfg = oci.canonical(manifest.nydus_config(config, descs))
        doc = oci.canonical(manifest.nydus_manifest(cfg, descs, {}))
        # Blobs first, the manifest after them, the index last.
        for b, r in zip(blobs, reports):
            dst.put_file(b, r.blob)
        dst.put(boot_layer)
        dst.put(cfg)
        digest = dst.put(doc)
        annotations = {"org.opencontainers.image.ref.name": tag} if tag else None
        entry_out = oci.descriptor(
            oci.MANIFEST,
            doc,
            annotations,
            platform=entry.get("platform")
            or {
                "os": config.get("os", "linux"),
                "architecture": config.get("architecture", "amd64"),
            },
        )
        # The target's index keeps what it lists; this manifest is added (once).
        index: Dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": []}
        if (Path(target) / "index.json").exists():
            index = dst.index()
        kept: List[Dict[str, Any]] = [
            e for e in index.get("manifests", []) if isinstance(e, dict) and e.get("digest") != digest
        ]
        index["manifests"] = [*kept, entry_out]
        dst.publish(index)
        return ConvertReport(digest, boot.stat().st_size, time.monotonic() - t0, reports)
    finally:
        shutil.rmtree(work, ignore_errors=True)
