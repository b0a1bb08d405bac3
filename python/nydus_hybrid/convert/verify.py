"""`nydus-hybrid check --source REF --target REF`, as nydusify's check: for each platform,
the Nydus image's tree, read lazily through our reader (or served by our FUSE daemon with
`mount=True`) from where it is stored, must equal the OCI image's layers flattened
(`flatten`): content, mode, owner, times, xattrs, hard links and the whiteouts' result."""

from __future__ import annotations

import errno
import gzip
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from nydus_hybrid import treecmp
from nydus_hybrid.convert import oci
from nydus_hybrid.convert.convert import (
    SourceImage,
    attestation,
    load_image,
    platform_matches,
    platform_name,
    source_images,
)
from nydus_hybrid.convert.flatten import apply_layer
from nydus_hybrid.convert.store import ImageSource
from nydus_hybrid.errors import InvalidArgumentError
from nydus_hybrid.image import Image
from nydus_hybrid.mounts.fuse import Mount, mount_image

MAX_BOOTSTRAP = 1 << 30
# A target index may hold the OCI manifests next to the Nydus ones (--merge-platform).
ANY_LAYER = oci.LAYER_TYPES | {oci.NYDUS_BLOB}


@dataclass
class PlatformCheck:
    platform: str
    source_manifest: str
    target_manifest: str
    entries: int
    differences: List[str] = field(default_factory=list)


@dataclass
class ImageCheckReport:
    source: str
    target: str
    read_by: str  # "reader" or "daemon"
    platforms: List[PlatformCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(not p.differences for p in self.platforms)


def _nydus_images(target: Any) -> List[SourceImage]:
    """The Nydus manifests at the target's name (the last layer is the bootstrap layer)."""
    media_type, data = target.root()
    doc = oci.parse_document(data, "the target's root document")
    if doc.get("mediaType", media_type) in (oci.INDEX, oci.DOCKER_MANIFEST_LIST):
        entries = [m for m in doc.get("manifests", []) if isinstance(m, dict) and not attestation(m)]
        images = [load_image(target, e, target.document_bytes(e), ANY_LAYER) for e in entries]
    else:
        images = [load_image(target, {"mediaType": media_type}, data, ANY_LAYER)]
    return [i for i in images if _is_nydus(i.manifest)]


def _is_nydus(m: Dict[str, Any]) -> bool:
    layers = m.get("layers") or [{}]
    last = layers[-1] if isinstance(layers, list) and isinstance(layers[-1], dict) else {}
    return bool(last.get("annotations", {}).get(oci.ANNOTATION_NYDUS_BOOTSTRAP) == "true")


def _bootstrap(target: Any, m: Dict[str, Any], work: Path) -> Path:
    """`image/image.boot` from the manifest's bootstrap layer."""
    path, temporary = target.layer(m["layers"][-1], work)
    out = work / "image.boot"
    try:
        with gzip.open(path) as gz, tarfile.open(fileobj=gz, mode="r|") as tf:
            for member in tf:
                if member.name.lstrip("./") == "image/image.boot" and member.isfile():
                    if member.size > MAX_BOOTSTRAP:
                        raise InvalidArgumentError(errno.EINVAL, f"image.boot is {member.size} bytes, too big")
                    f = tf.extractfile(member)
                    assert f is not None
                    with open(out, "wb") as dst:
                        shutil.copyfileobj(f, dst, 1 << 20)
                    return out
    except (OSError, tarfile.TarError) as e:
        raise InvalidArgumentError(errno.EINVAL, f"the bootstrap layer is not a tar.gz ({e})") from None
    finally:
        if temporary:
            path.unlink(missing_ok=True)
    raise InvalidArgumentError(errno.EINVAL, "the bootstrap layer holds no image/image.boot")


def _nydus_tree(target: Any, image: SourceImage, work: Path, mount: bool) -> Tuple[Path, Optional[Mount]]:
    boot = _bootstrap(target, image.manifest, work)
    config = {
        "version": 2,
        "backend": target.backend(),
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(work / "cache")}},
    }
    (work / "cache").mkdir()
    if mount:
        mnt = work / "mnt"
        mnt.mkdir()
        return mnt, mount_image(mnt, boot, config=config)
    out = work / "nydus"
    Image.open(boot, config=config).unpack_dir(out)
    return out, None


def check_images(
    source: ImageSource,
    target: Any,
    *,
    platform: Optional[str] = None,
    mount: bool = False,
) -> ImageCheckReport:
    """Compare every platform of `source` (or `platform`) with its Nydus image in
    `target` (a `Registry` or `Layout`)."""
    _, images = source_images(source, platform)
    nydus = _nydus_images(target)
    report = ImageCheckReport(str(source), str(target), "daemon" if mount else "reader")
    for image in images:
        name = platform_name(image.platform)
        match = [n for n in nydus if platform_matches(n.platform, name)] or (nydus if len(nydus) == 1 else [])
        if not match:
            raise InvalidArgumentError(errno.ENOENT, f"{target}: no Nydus image for {name}")
        with tempfile.TemporaryDirectory(prefix="nydus-check-") as tmp:
            work = Path(tmp)
            oci_root = work / "oci"
            oci_root.mkdir()
            for desc in image.manifest["layers"]:
                path, temporary = source.layer(desc, work)
                try:
                    apply_layer(path, oci_root)
                finally:
                    if temporary:
                        path.unlink(missing_ok=True)
            tree, served = _nydus_tree(target, match[0], work, mount)
            try:
                diff = treecmp.compare(str(oci_root), str(tree))
            finally:
                if served:
                    served.stop(umount=True)
        report.platforms.append(
            PlatformCheck(name, image.entry["digest"], match[0].entry["digest"], diff.entries, diff.differences)
        )
    return report
