"""The wire format of containerd's snapshots service, which we serve (spec A2.2),
declared as `grpcwire` tables; `proto/containerd/services/snapshots/v1/snapshots.proto`
says the same thing in protobuf's own syntax."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from google.protobuf import descriptor_pb2

from nydus_hybrid import grpcwire
from nydus_hybrid.grpcwire import EMPTY, FIELD_MASK, INT64, MAP, STRING, TIMESTAMP, Field, ProtoFile, Wire

SERVICE = "containerd.services.snapshots.v1.Snapshots"
PACKAGE = "containerd.services.snapshots.v1"

_S = STRING
_MAP = MAP
_MOUNTS = ".containerd.types.Mount"

MOUNT_FILE = ProtoFile(
    name="containerd/types/mount.proto",
    package="containerd.types",
    messages={
        "Mount": [
            ("type", 1, _S, False),
            ("source", 2, _S, False),
            ("target", 3, _S, False),
            ("options", 4, _S, True),
        ]
    },
)

_MESSAGES: Dict[str, List[Field]] = {
    "PrepareSnapshotRequest": [
        ("snapshotter", 1, _S, False),
        ("key", 2, _S, False),
        ("parent", 3, _S, False),
        ("labels", 4, _MAP, False),
    ],
    "PrepareSnapshotResponse": [("mounts", 1, _MOUNTS, True)],
    "ViewSnapshotRequest": [
        ("snapshotter", 1, _S, False),
        ("key", 2, _S, False),
        ("parent", 3, _S, False),
        ("labels", 4, _MAP, False),
    ],
    "ViewSnapshotResponse": [("mounts", 1, _MOUNTS, True)],
    "MountsRequest": [("snapshotter", 1, _S, False), ("key", 2, _S, False)],
    "MountsResponse": [("mounts", 1, _MOUNTS, True)],
    "RemoveSnapshotRequest": [("snapshotter", 1, _S, False), ("key", 2, _S, False)],
    "CommitSnapshotRequest": [
        ("snapshotter", 1, _S, False),
        ("name", 2, _S, False),
        ("key", 3, _S, False),
        ("labels", 4, _MAP, False),
        ("parent", 5, _S, False),
    ],
    "StatSnapshotRequest": [("snapshotter", 1, _S, False), ("key", 2, _S, False)],
    "Info": [
        ("name", 1, _S, False),
        ("parent", 2, _S, False),
        ("kind", 3, f".{PACKAGE}.Kind", False),
        ("created_at", 4, TIMESTAMP, False),
        ("updated_at", 5, TIMESTAMP, False),
        ("labels", 6, _MAP, False),
    ],
    "StatSnapshotResponse": [("info", 1, f".{PACKAGE}.Info", False)],
    "UpdateSnapshotRequest": [
        ("snapshotter", 1, _S, False),
        ("info", 2, f".{PACKAGE}.Info", False),
        ("update_mask", 3, FIELD_MASK, False),
    ],
    "UpdateSnapshotResponse": [("info", 1, f".{PACKAGE}.Info", False)],
    "ListSnapshotsRequest": [("snapshotter", 1, _S, False), ("filters", 2, _S, True)],
    "ListSnapshotsResponse": [("info", 1, f".{PACKAGE}.Info", True)],
    "UsageRequest": [("snapshotter", 1, _S, False), ("key", 2, _S, False)],
    "UsageResponse": [("size", 1, INT64, False), ("inodes", 2, INT64, False)],
    "CleanupRequest": [("snapshotter", 1, _S, False)],
}

KIND_VALUES = [("UNKNOWN", 0), ("VIEW", 1), ("ACTIVE", 2), ("COMMITTED", 3)]

# method: (request, response, server-streaming)
METHODS: Dict[str, Tuple[str, str, bool]] = {
    "Prepare": ("PrepareSnapshotRequest", "PrepareSnapshotResponse", False),
    "View": ("ViewSnapshotRequest", "ViewSnapshotResponse", False),
    "Mounts": ("MountsRequest", "MountsResponse", False),
    "Commit": ("CommitSnapshotRequest", EMPTY, False),
    "Remove": ("RemoveSnapshotRequest", EMPTY, False),
    "Stat": ("StatSnapshotRequest", "StatSnapshotResponse", False),
    "Update": ("UpdateSnapshotRequest", "UpdateSnapshotResponse", False),
    "List": ("ListSnapshotsRequest", "ListSnapshotsResponse", True),
    "Usage": ("UsageRequest", "UsageResponse", False),
    "Cleanup": ("CleanupRequest", EMPTY, False),
}

SNAPSHOTS_FILE = ProtoFile(
    name="containerd/services/snapshots/v1/snapshots.proto",
    package=PACKAGE,
    deps=[
        "google/protobuf/empty.proto",
        "google/protobuf/field_mask.proto",
        "google/protobuf/timestamp.proto",
        "containerd/types/mount.proto",
    ],
    messages=_MESSAGES,
    enums={"Kind": KIND_VALUES},
    services={"Snapshots": {m: (req, resp, False, stream) for m, (req, resp, stream) in METHODS.items()}},
)

FILES = [MOUNT_FILE, SNAPSHOTS_FILE]
WIRE = Wire(FILES)


def file_descriptors() -> List[descriptor_pb2.FileDescriptorProto]:
    return grpcwire.file_descriptors(FILES)


def message(name: str) -> Any:
    """The message class `name` ("PrepareSnapshotRequest", "Mount", "Empty"), or of a
    method's request or response type as METHODS names it."""
    if name == "Mount":
        return WIRE.message(_MOUNTS)
    if name == "Empty":
        return WIRE.message(EMPTY)
    return WIRE.message(SNAPSHOTS_FILE.qualified(name))
