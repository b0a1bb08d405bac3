"""The snapshot labels the snapshotter reads and writes (spec A9.1): the ones containerd's
unpacker and CRI plugin send, and the Nydus layer annotations that image conversion puts on
layer descriptors (`nydus_hybrid.convert.oci`), which reach us as labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from nydus_hybrid.convert import oci
from nydus_hybrid.errors import NydusError
from nydus_hybrid.mounts import idmap
from nydus_hybrid.snapshotter.errors import InvalidArgument

# containerd sets this on a pull-time Prepare: the chain id it will commit the layer as.
TARGET_SNAPSHOT_REF = "containerd.io/snapshot.ref"
CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
CRI_MANIFEST_DIGEST = "containerd.io/snapshot/cri.manifest-digest"
CRI_IMAGE_LAYERS = "containerd.io/snapshot/cri.image-layers"
# buildkit's image reference, used when there is no CRI one.
STARGZ_REF = "containerd.io/snapshot/remote/stargz.reference"
NYDUS_DATA_LAYER = oci.ANNOTATION_NYDUS_BLOB
NYDUS_META_LAYER = oci.ANNOTATION_NYDUS_BOOTSTRAP
UID_MAPPING = "containerd.io/snapshot/uidmapping"
GID_MAPPING = "containerd.io/snapshot/gidmapping"
OVERLAY_VOLATILE = "containerd.io/snapshot/overlay.volatile"


def is_nydus_data_layer(labels: Dict[str, str]) -> bool:
    return labels.get(NYDUS_DATA_LAYER) == "true"


def is_nydus_meta_layer(labels: Dict[str, str]) -> bool:
    return labels.get(NYDUS_META_LAYER) == "true"


@dataclass(frozen=True)
class IdMapping:
    """A container's user-namespace mapping (capability `remap-ids`): image ids
    `inside..inside+size` are host ids `host..`, for uids and gids."""

    uid: str  # inside:host:size
    gid: str

    def host_root(self) -> Optional[Tuple[int, int]]:
        """The host uid and gid of the container's root (its upper dir's owner), if the
        mapping includes root."""
        (ui, uh, _), (gi, gh, _) = (
            idmap.parse(self.uid, UID_MAPPING),
            idmap.parse(self.gid, GID_MAPPING),
        )
        return (uh, gh) if ui == 0 and gi == 0 else None

    def key(self) -> str:
        """A name for this mapping that is safe in paths (an instance key suffix)."""
        return f"{self.uid}-{self.gid}".replace(":", ".")


def id_mapping(labels: Dict[str, str]) -> Optional[IdMapping]:
    """The snapshot's id mapping, or None; both labels or neither, each `inside:host:size`."""
    uid, gid = labels.get(UID_MAPPING), labels.get(GID_MAPPING)
    if uid is None and gid is None:
        return None
    if uid is None or gid is None:
        raise InvalidArgument(f"{UID_MAPPING} and {GID_MAPPING} go together: only one was given")
    try:
        for text, what in ((uid, UID_MAPPING), (gid, GID_MAPPING)):
            idmap.parse(text, what)
    except NydusError as e:
        raise InvalidArgument(str(e)) from None
    return IdMapping(uid, gid)
