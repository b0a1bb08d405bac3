"""Convert an OCI image (a registry, a layout directory or a docker archive) to a Nydus
image (in a registry or a layout), as nydusify does.

Each layer becomes a layer blob carrying its own bootstrap, built in parallel (the builds
release the GIL and stream their input, so memory stays bounded) and reused from the
layer cache when the same source layer was converted with the same options before. The
layer bootstraps are merged, and the bootstrap layer, config and manifest follow. Order
is what keeps a failed run invisible: every blob is stored first, then manifests by
digest, and the target's name moves last (`ImageTarget.publish`)."""

from __future__ import annotations

import errno
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple

from nydus_hybrid.builder import build, merge
from nydus_hybrid.convert import manifest, oci
from nydus_hybrid.convert.cache import LayerCache
from nydus_hybrid.convert.layout import Layout
from nydus_hybrid.convert.store import ImageSource, ImageTarget
from nydus_hybrid.errors import BlobMissingError, InvalidArgumentError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ConvertOptions:
    platform: Optional[str] = None  # "os/arch[/variant]"; None converts every platform
    merge_platform: bool = False  # add the Nydus manifests to the source's index
    chunk_size: int = 0x100000
    compressor: str = "zstd"
    threads: int = 4
    cache: Optional[Path] = None  # the layer cache's directory; None disables it
    prefetch: Sequence[bytes] = ()  # paths for the merged bootstrap's prefetch table
    # A bootstrap whose chunks are referenced rather than stored again (its blobs must be
    # in the target already: an earlier image's merged bootstrap, typically).
    chunk_dict: Optional[Path] = None
    progress: Optional[Progress] = None

    def blob_options(self) -> Dict[str, Any]:
        """What changes a layer blob's bytes: the layer cache's key holds all of it."""
        dict_digest = oci.sha256_digest(self.chunk_dict.read_bytes()) if self.chunk_dict else None
        return {
            "chunk_size": self.chunk_size,
            "compressor": self.compressor,
            "inline": True,
            "whiteout": "none",
            "chunk_dict": dict_digest,
        }


@dataclass
class LayerReport:
    source: str  # the source layer's digest
    blob: str  # the Nydus layer blob's digest
    source_size: int
    blob_size: int
    seconds: float
    cached: bool  # reused from the layer cache, or from an earlier layer of this run
    pushed: bool  # sent to the target (False: the target had it)
    dict_chunks: int  # chunks found in the chunk dictionary, so not stored in this blob


@dataclass
class PlatformReport:
    platform: str
    manifest: str  # the Nydus manifest's digest
    source_manifest: str
    bootstrap_size: int
    layers: List[LayerReport] = field(default_factory=list)


@dataclass
class ConvertReport:
    source: str
    target: str
    digest: str  # what the target's name points at now (a manifest or an index)
    media_type: str
    seconds: float
    platforms: List[PlatformReport] = field(default_factory=list)
    totals: Dict[str, int] = field(default_factory=dict)


def platform_name(p: Dict[str, Any]) -> str:
    parts = [str(p.get("os", "")), str(p.get("architecture", ""))]
    if p.get("variant"):
        parts.append(str(p["variant"]))
    return "/".join(parts)


def platform_matches(p: Dict[str, Any], want: str) -> bool:
    have = platform_name(p)
    # "linux/arm64" matches "linux/arm64/v8", as containerd's platform matcher does.
    return have == want or (want.count("/") == 1 and have.startswith(want + "/"))


def attestation(entry: Dict[str, Any]) -> bool:
    """An index entry that is an attestation (buildx), not an image."""
    annotations = entry.get("annotations") or {}
    return bool(
        annotations.get("vnd.docker.reference.type") == "attestation-manifest"
        or (entry.get("platform") or {}).get("os") == "unknown"
    )


@dataclass
class SourceImage:
    """One source image manifest to convert."""

    entry: Dict[str, Any]  # its descriptor (with its platform, when from an index)
    data: bytes
    manifest: Dict[str, Any]
    config_data: bytes
    config: Dict[str, Any]

    @property
    def platform(self) -> Dict[str, Any]:
        return dict(self.entry.get("platform") or {}) or {
            "os": self.config.get("os", "linux"),
            "architecture": self.config.get("architecture", "amd64"),
            **({"variant": self.config["variant"]} if self.config.get("variant") else {}),
        }


def load_image(
    source: ImageSource, entry: Dict[str, Any], data: bytes, layer_types: Collection[str] = oci.LAYER_TYPES
) -> SourceImage:
    """An image manifest, its layer descriptors checked (their media types among
    `layer_types`), and its config."""
    digest = oci.sha256_digest(data)
    m = oci.parse_document(data, digest)
    if m.get("mediaType", entry.get("mediaType")) not in (oci.MANIFEST, oci.DOCKER_MANIFEST):
        raise InvalidArgumentError(errno.EINVAL, f"{digest}: not an image manifest ({m.get('mediaType')!r})")
    layers = m.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgumentError(errno.EINVAL, f"manifest {digest}: no layer list")
    for d in layers:
        oci.checked_descriptor(d)
        if d.get("mediaType") not in layer_types:
            raise InvalidArgumentError(
                errno.EINVAL, f"layer {d.get('digest')}: media type {d.get('mediaType')!r} cannot be converted"
            )
    cdigest, csize = oci.checked_descriptor(m.get("config"))
    config_data = source.document_bytes(m["config"])
    config = oci.parse_document(config_data, cdigest, csize)
    return SourceImage({**entry, "digest": digest, "size": len(data)}, data, m, config_data, config)


def source_images(source: ImageSource, platform: Optional[str]) -> Tuple[Optional[Dict[str, Any]], List[SourceImage]]:
    """The source index (None for a single manifest) and the images to convert in it."""
    media_type, data = source.root()
    doc = oci.parse_document(data, "the source's root document")
    kind = doc.get("mediaType", media_type)
    if kind not in (oci.INDEX, oci.DOCKER_MANIFEST_LIST):
        image = load_image(source, {"mediaType": kind}, data)
        if platform and not platform_matches(image.platform, platform):
            raise InvalidArgumentError(errno.EINVAL, f"the source is {platform_name(image.platform)}, not {platform}")
        return None, [image]
    entries = [m for m in doc.get("manifests", []) if isinstance(m, dict)]
    # A Nydus manifest merged into the index earlier is never converted again, and neither
    # are attestations (buildx lists them as manifests for the platform unknown/unknown).
    entries = [m for m in entries if oci.NYDUS_OS_FEATURE not in (m.get("platform") or {}).get("os.features", [])]
    entries = [m for m in entries if not attestation(m)]
    entries = [m for m in entries if m.get("mediaType") in (oci.MANIFEST, oci.DOCKER_MANIFEST)]
    if platform:
        entries = [m for m in entries if platform_matches(m.get("platform") or {}, platform)]
    if not entries:
        raise InvalidArgumentError(
            errno.EINVAL,
            "the source index holds no image manifest" + (f" for {platform}" if platform else ""),
        )
    return doc, [load_image(source, e, source.document_bytes(e)) for e in entries]


class _Converter:
    def __init__(self, source: ImageSource, target: ImageTarget, opts: ConvertOptions, work: Path) -> None:
        self.source, self.target, self.opts, self.work = source, target, opts, work
        self.cache = LayerCache(opts.cache) if opts.cache else None
        self.pool = ThreadPoolExecutor(max(1, opts.threads))
        self.lock = threading.Lock()
        self.layers: Dict[str, Future[Tuple[LayerReport, Path]]] = {}
        self.blob_options = opts.blob_options()

    def say(self, line: str) -> None:
        if self.opts.progress:
            self.opts.progress(line)

    def layer(self, desc: Dict[str, Any]) -> Future[Tuple[LayerReport, Path]]:
        """The conversion of one source layer, started once however often it appears."""
        with self.lock:
            digest = desc["digest"]
            if digest not in self.layers:
                self.layers[digest] = self.pool.submit(self._convert_layer, desc)
            return self.layers[digest]

    def _convert_layer(self, desc: Dict[str, Any]) -> Tuple[LayerReport, Path]:
        t = time.monotonic()
        digest = desc["digest"]
        key = LayerCache.key(digest, self.blob_options)
        hit = self.cache.get(key) if self.cache else None
        if self.opts.merge_platform:
            self._copy_blob(desc)
        if hit:
            blob, blob_digest, cached, dict_chunks = hit.path, hit.digest, True, hit.dict_chunks
        else:
            self.say(f"layer {digest[7:19]}: fetching {int(desc.get('size') or 0) / 1048576:.1f} MiB")
            path, temporary = self.source.layer(desc, self.work)
            self.say(f"layer {digest[7:19]}: converting")
            out = self.work / ("layer-" + digest.partition(":")[2])
            try:
                r = build(
                    path,
                    None,
                    out,
                    inline_bootstrap=True,
                    whiteout_spec="none",
                    chunk_size=self.opts.chunk_size,
                    compressor=self.opts.compressor,
                    chunk_dict=self.opts.chunk_dict,
                    progress=False,
                )
            finally:
                if temporary:
                    path.unlink(missing_ok=True)
            assert r.blob_path is not None and r.blob_id is not None
            blob, blob_digest, cached, dict_chunks = Path(r.blob_path), "sha256:" + r.blob_id, False, r.dict_chunks
            if self.cache:
                self.cache.put(key, blob, blob_digest, dict_chunks)
        pushed = self.target.put_file(blob, blob_digest)
        size = blob.stat().st_size
        source_size, seconds = int(desc.get("size") or 0), time.monotonic() - t
        report = LayerReport(digest, blob_digest, source_size, size, seconds, cached, pushed, dict_chunks)
        how = "reused" if cached else "built"
        self.say(f"layer {digest[7:19]}: {how} {size / 1048576:.1f} MiB in {report.seconds:.1f} s")
        return report, blob

    def _copy_blob(self, desc: Dict[str, Any]) -> None:
        """Copy a source blob to the target (`--merge-platform` keeps the OCI image next
        to the Nydus one, so its blobs must be there too)."""
        digest = desc["digest"]
        if self.target.has_blob(digest):
            return
        path, temporary = self.source.layer(desc, self.work)
        try:
            self.target.put_file(path, digest)
        finally:
            if temporary:
                path.unlink(missing_ok=True)

    def copy_manifest(self, entry: Dict[str, Any]) -> None:
        """A source manifest, its config and its layers, into the target (`--merge-platform`
        keeps the whole source index, so everything it names must be in the target)."""
        digest, size = oci.checked_descriptor(entry)
        data = self.source.document_bytes(entry)
        m = oci.parse_document(data, digest, size)
        blobs = [d for d in m.get("layers") or [] if isinstance(d, dict)]
        futures = [self.pool.submit(self._copy_blob, d) for d in blobs]
        for f in futures:
            f.result()
        self.target.put(self.source.document_bytes(m.get("config") or {}))
        self.target.put_manifest(data, str(entry.get("mediaType", oci.MANIFEST)))

    def dict_blobs(self, blob_ids: List[str], own: set[str]) -> List[Dict[str, Any]]:
        """Descriptors of the chunk dictionary's blobs the merged image reads from, appended
        after the layers (as nydusify does); each must already be in the target."""
        out = []
        for blob_id in blob_ids:
            digest = "sha256:" + blob_id
            if digest in own:
                continue
            size = self.target.blob_size(digest)
            if size is None:
                raise BlobMissingError(
                    errno.ENOENT,
                    f"the chunk dictionary's blob {digest} is not in {self.target}; push its image there first",
                )
            out.append(manifest.blob_descriptor(digest, size))
        return out

    def convert(self, image: SourceImage) -> Tuple[PlatformReport, bytes]:
        descs = image.manifest["layers"]
        futures = [self.layer(d) for d in descs]
        done = [f.result() for f in futures]
        boot = self.work / f"image-{image.entry['digest'][7:]}.boot"
        merged = merge([blob for _, blob in done], boot, prefetch=list(self.opts.prefetch))
        boot_layer, diff_id = manifest.bootstrap_layer(boot.read_bytes())
        layer_descs = [manifest.blob_layer_of(blob, r.blob) for r, blob in done]
        layer_descs += self.dict_blobs(merged.blobs, {r.blob for r, _ in done})
        layer_descs.append(manifest.bootstrap_descriptor(boot_layer, diff_id))
        config = oci.canonical(manifest.nydus_config(image.config, layer_descs))
        doc = oci.canonical(manifest.nydus_manifest(config, layer_descs, {}))
        self.target.put(boot_layer)
        self.target.put(config)
        name = platform_name(image.platform)
        self.say(f"{name}: merged {len(done)} layers into a {boot.stat().st_size} byte bootstrap")
        return PlatformReport(
            name, oci.sha256_digest(doc), image.entry["digest"], boot.stat().st_size, [r for r, _ in done]
        ), doc


def convert(source: ImageSource, target: ImageTarget, opts: ConvertOptions = ConvertOptions()) -> ConvertReport:
    """Convert `source` into `target` (see the module's docstring). Returns the report; on
    any error the target's name is untouched."""
    t0 = time.monotonic()
    index, images = source_images(source, opts.platform)
    work = Path(tempfile.mkdtemp(prefix=".nydus-convert-", dir=_work_parent(target)))
    c = _Converter(source, target, opts, work)
    try:
        results = [c.convert(image) for image in images]
        reports = [r for r, _ in results]
        if opts.merge_platform:
            root_index = index or {
                "schemaVersion": 2,
                "mediaType": oci.INDEX,
                "manifests": [oci.descriptor(oci.MANIFEST, images[0].data, platform=images[0].platform)],
            }
            for e in root_index.get("manifests", []):
                c.copy_manifest(e)
            for image, (_, doc) in zip(images, results):
                target.put_manifest(doc, oci.MANIFEST)
                root_index = manifest.merge_into_index(root_index, doc, image.platform)
            media_type, root = oci.INDEX, oci.canonical(root_index)
        elif index is None or (opts.platform and len(results) == 1):
            media_type, root = oci.MANIFEST, results[0][1]
        else:
            for _, doc in results:
                target.put_manifest(doc, oci.MANIFEST)
            out = {
                "schemaVersion": 2,
                "mediaType": oci.INDEX,
                "manifests": [
                    oci.descriptor(oci.MANIFEST, doc, platform=image.platform)
                    for image, (_, doc) in zip(images, results)
                ],
            }
            media_type, root = oci.INDEX, oci.canonical(out)
        target.publish(root, media_type)
        c.say(f"published {oci.sha256_digest(root)} to {target}")
        return ConvertReport(
            str(source),
            str(target),
            oci.sha256_digest(root),
            media_type,
            time.monotonic() - t0,
            reports,
            _totals(reports),
        )
    finally:
        c.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(work, ignore_errors=True)


def _totals(reports: List[PlatformReport]) -> Dict[str, int]:
    layers = {r.source: r for p in reports for r in p.layers}  # each source layer once
    return {
        "layers": len(layers),
        "layers_reused": sum(1 for r in layers.values() if r.cached),
        "source_bytes": sum(r.source_size for r in layers.values()),
        "blob_bytes": sum(r.blob_size for r in layers.values()),
        "pushed_bytes": sum(r.blob_size for r in layers.values() if r.pushed),
        "bootstrap_bytes": sum(p.bootstrap_size for p in reports),
        "dict_chunks": sum(r.dict_chunks for r in layers.values()),
    }


def _work_parent(target: ImageTarget) -> Optional[str]:
    """Temporaries next to a layout target (finished blobs then move in by link); the
    system's temporary directory otherwise."""
    if isinstance(target, Layout):
        target.dir.mkdir(parents=True, exist_ok=True)
        return str(target.dir)
    return None
