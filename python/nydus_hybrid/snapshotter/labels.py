"""The snapshot labels the snapshotter reads and writes (spec A9.1): the ones containerd's
unpacker and CRI plugin send, and the Nydus layer annotations that image conversion puts on
layer descriptors (`nydus_hybrid.convert.oci`), which reach us as labels."""

from __future__ import annotations

from typing import Dict

from nydus_hybrid.convert import oci

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
