"""A lazy pull through containerd's API, as `ctr-remote rpull` does it.

The manifest and config go into containerd's content store. Then the layers are unpacked
through the snapshotter in containerd's own way (a pull-time Prepare per layer, labelled
with the layer's `containerd.io/snapshot/*` annotations, the chain id it will be committed
as, and the `cri.*` labels the CRI plugin would add). A remote snapshotter answers
ALREADY_EXISTS for a Nydus data layer, and that layer is never downloaded. Any other layer
(the Nydus bootstrap layer, or every layer of an ordinary OCI image) is fetched, applied by
containerd's diff service and committed. Last, the config gets its gc label for the
snapshot chain and the image record is written, so `ctr run --snapshotter` finds the image
unpacked."""

from __future__ import annotations

import errno
import hashlib
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from nydus_hybrid.containerd.client import Client, ContainerdError, already_exists
from nydus_hybrid.convert import oci
from nydus_hybrid.convert.convert import SourceImage, load_image, platform_matches
from nydus_hybrid.convert.reference import RegistryRef
from nydus_hybrid.convert.registry import Registry
from nydus_hybrid.errors import InvalidArgumentError
from nydus_hybrid.snapshotter import labels as snap_labels

LABEL_PREFIX = "containerd.io/snapshot/"
MAX_LABEL = 4096  # containerd's limit on a label's key and value together
PULLABLE_LAYERS = {*oci.LAYER_TYPES, oci.NYDUS_BLOB}


@dataclass
class LayerResult:
    digest: str
    chain_id: str
    lazy: bool  # committed by the snapshotter without a download
    fetched_bytes: int = 0


@dataclass
class PullReport:
    image: str
    manifest: str
    snapshotter: str
    chain_id: str = ""
    layers: List[LayerResult] = field(default_factory=list)
    fetched_bytes: int = 0  # everything this pull downloaded: documents and layers
    image_bytes: int = 0  # what a full pull would download
    seconds: float = 0.0

    def to_json(self) -> Dict[str, Any]:
        return {
            "image": self.image,
            "manifest": self.manifest,
            "snapshotter": self.snapshotter,
            "chain_id": self.chain_id,
            "layers": [vars(x) for x in self.layers],
            "lazy_layers": sum(x.lazy for x in self.layers),
            "fetched_bytes": self.fetched_bytes,
            "image_bytes": self.image_bytes,
            "seconds": round(self.seconds, 3),
        }


def chain_ids(diff_ids: List[str]) -> List[str]:
    """containerd's chain ids (identity.ChainID) of each prefix of the layer list."""
    out: List[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def image_name(ref: RegistryRef) -> str:
    """The image record's name: the normalised reference, `latest` when no tag is given."""
    text = str(ref)
    return text if (ref.tag or ref.digest) else f"{text}:latest"


def cri_layer_labels(image: str, manifest_digest: str, layers: List[Dict[str, Any]], i: int) -> Dict[str, str]:
    """The labels containerd's CRI plugin puts on layer `i` of an image it pulls; the layer
    list is cut to fit one label."""
    key = snap_labels.CRI_IMAGE_LAYERS
    kept: List[str] = []
    for d in layers[i:]:
        if len(key) + len(",".join([*kept, d["digest"]])) > MAX_LABEL:
            break
        kept.append(d["digest"])
    return {
        snap_labels.CRI_IMAGE_REF: image,
        snap_labels.CRI_MANIFEST_DIGEST: manifest_digest,
        snap_labels.CRI_LAYER_DIGEST: layers[i]["digest"],
        key: ",".join(kept),
    }


def select_manifest(registry: Registry, platform: str) -> SourceImage:
    """The image to pull at the reference: the manifest itself, or from an index the Nydus
    manifest for the platform (merged indexes hold both), else its OCI manifest."""
    media_type, data = registry.root()
    doc = oci.parse_document(data, "the image's root document")
    kind = doc.get("mediaType", media_type)
    if kind not in (oci.INDEX, oci.DOCKER_MANIFEST_LIST):
        return load_image(registry, {"mediaType": kind}, data, PULLABLE_LAYERS)
    entries = [
        m
        for m in doc.get("manifests", [])
        if isinstance(m, dict)
        and m.get("mediaType") in (oci.MANIFEST, oci.DOCKER_MANIFEST)
        and platform_matches(m.get("platform") or {}, platform)
    ]
    if not entries:
        raise InvalidArgumentError(errno.ENOENT, f"{registry}: the index has no manifest for {platform}")
    nydus = [m for m in entries if oci.NYDUS_OS_FEATURE in (m.get("platform") or {}).get("os.features", [])]
    chosen = (nydus or entries)[0]
    return load_image(registry, chosen, registry.document_bytes(chosen), PULLABLE_LAYERS)


class Puller:
    def __init__(
        self,
        client: Client,
        registry: Registry,
        snapshotter: str,
        *,
        platform: str = "linux/amd64",
        progress: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.client, self.registry, self.snapshotter = client, registry, snapshotter
        self.platform = platform
        self.progress = progress

    def say(self, line: str) -> None:
        if self.progress:
            self.progress(line)

    def pull(self) -> PullReport:
        started = time.monotonic()
        image = select_manifest(self.registry, self.platform)
        name = image_name(self.registry.ref)
        manifest_digest = image.entry["digest"]
        layers: List[Dict[str, Any]] = image.manifest["layers"]
        diff_ids = (image.config.get("rootfs") or {}).get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise InvalidArgumentError(
                errno.EINVAL, f"{manifest_digest}: the config's diff ids do not match its {len(layers)} layers"
            )
        chains = chain_ids([str(d) for d in diff_ids])
        report = PullReport(name, manifest_digest, self.snapshotter, chains[-1] if chains else "")
        report.image_bytes = len(image.data) + len(image.config_data) + sum(int(d["size"]) for d in layers)
        report.fetched_bytes = len(image.data) + len(image.config_data)
        with self.client.lease():
            config_desc = image.manifest["config"]
            self.client.write_bytes(config_desc["digest"], image.config_data, {})
            gc = {"containerd.io/gc.ref.content.config": config_desc["digest"]}
            gc.update({f"containerd.io/gc.ref.content.l.{i}": d["digest"] for i, d in enumerate(layers)})
            self.client.write_bytes(manifest_digest, image.data, gc)
            with tempfile.TemporaryDirectory(prefix="nydus-pull-") as work:
                for i in range(len(layers)):
                    result = self._unpack(name, manifest_digest, layers, i, chains, diff_ids[i], Path(work))
                    report.layers.append(result)
                    report.fetched_bytes += result.fetched_bytes
            if chains:
                self.client.label_content(
                    config_desc["digest"], {f"containerd.io/gc.ref.snapshot.{self.snapshotter}": chains[-1]}
                )
            target = {"mediaType": image.entry.get("mediaType", oci.MANIFEST), "digest": manifest_digest}
            self.client.put_image(name, {**target, "size": len(image.data)})
        report.seconds = time.monotonic() - started
        return report

    def _unpack(
        self,
        name: str,
        manifest_digest: str,
        layers: List[Dict[str, Any]],
        i: int,
        chains: List[str],
        diff_id: str,
        work: Path,
    ) -> LayerResult:
        desc, chain = layers[i], chains[i]
        parent = chains[i - 1] if i else ""
        if self.client.snapshot_exists(self.snapshotter, chain):
            self.say(f"layer {i + 1}/{len(layers)} {desc['digest'][:19]}: present")
            return LayerResult(desc["digest"], chain, lazy=False)
        lbls = {k: v for k, v in (desc.get("annotations") or {}).items() if k.startswith(LABEL_PREFIX)}
        lbls.update(cri_layer_labels(name, manifest_digest, layers, i))
        lbls[snap_labels.TARGET_SNAPSHOT_REF] = chain
        key = f"extract-{uuid.uuid4().hex[:12]} {chain}"
        try:
            mounts = self.client.prepare(self.snapshotter, key, parent, lbls)
        except ContainerdError as e:
            if already_exists(e) and self.client.snapshot_exists(self.snapshotter, chain):
                self.say(f"layer {i + 1}/{len(layers)} {desc['digest'][:19]}: remote, not downloaded")
                return LayerResult(desc["digest"], chain, lazy=True)
            raise
        try:
            self.say(f"layer {i + 1}/{len(layers)} {desc['digest'][:19]}: fetching {desc['size']} bytes")
            path, _ = self.registry.layer(desc, work)
            self.client.write_file(desc["digest"], str(path), {})
            path.unlink()
            applied = self.client.apply(desc, mounts)
            if applied != diff_id:
                raise InvalidArgumentError(
                    errno.EIO, f"layer {desc['digest']}: applied as {applied}, but the config says {diff_id}"
                )
            self.client.commit(self.snapshotter, chain, key, lbls)
        except BaseException:
            try:
                self.client.remove_snapshot(self.snapshotter, key)
            except ContainerdError:
                pass  # already gone, or containerd is down: its own cleanup takes it
            raise
        self.client.label_content(desc["digest"], {oci.ANNOTATION_UNCOMPRESSED: diff_id})
        return LayerResult(desc["digest"], chain, lazy=False, fetched_bytes=int(desc["size"]))
