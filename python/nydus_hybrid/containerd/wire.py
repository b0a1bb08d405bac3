"""The wire format of the containerd 1.6 services we call (content, images, leases, diff),
declared as `grpcwire` tables (the CRI image service is in `criwire`). Only the messages and methods
a pull needs are declared; `proto/` has the same subset as `.proto` files."""

from __future__ import annotations

from typing import Any

from nydus_hybrid.grpcwire import (
    BOOL,
    BYTES,
    EMPTY,
    FIELD_MASK,
    INT64,
    MAP,
    STRING,
    TIMESTAMP,
    ProtoFile,
    Wire,
)
from nydus_hybrid.snapshotter import wire as snapshots_wire

_WK = ["google/protobuf/empty.proto", "google/protobuf/field_mask.proto", "google/protobuf/timestamp.proto"]
DESCRIPTOR = ".containerd.types.Descriptor"

DESCRIPTOR_FILE = ProtoFile(
    name="containerd/types/descriptor.proto",
    package="containerd.types",
    messages={
        "Descriptor": [
            ("media_type", 1, STRING, False),
            ("digest", 2, STRING, False),
            ("size", 3, INT64, False),
            ("annotations", 5, MAP, False),
        ]
    },
)

CONTENT = ProtoFile(
    name="containerd/services/content/v1/content.proto",
    package="containerd.services.content.v1",
    deps=_WK,
    enums={"WriteAction": [("STAT", 0), ("WRITE", 1), ("COMMIT", 2)]},
    messages={
        "Info": [
            ("digest", 1, STRING, False),
            ("size", 2, INT64, False),
            ("created_at", 3, TIMESTAMP, False),
            ("updated_at", 4, TIMESTAMP, False),
            ("labels", 5, MAP, False),
        ],
        "InfoRequest": [("digest", 1, STRING, False)],
        "InfoResponse": [("info", 1, "Info", False)],
        "UpdateRequest": [("info", 1, "Info", False), ("update_mask", 2, FIELD_MASK, False)],
        "UpdateResponse": [("info", 1, "Info", False)],
        "DeleteContentRequest": [("digest", 1, STRING, False)],
        "WriteContentRequest": [
            ("action", 1, "WriteAction", False),
            ("ref", 2, STRING, False),
            ("total", 3, INT64, False),
            ("expected", 4, STRING, False),
            ("offset", 5, INT64, False),
            ("data", 6, BYTES, False),
            ("labels", 7, MAP, False),
        ],
        "WriteContentResponse": [
            ("action", 1, "WriteAction", False),
            ("started_at", 2, TIMESTAMP, False),
            ("updated_at", 3, TIMESTAMP, False),
            ("offset", 4, INT64, False),
            ("total", 5, INT64, False),
            ("digest", 6, STRING, False),
        ],
        "AbortRequest": [("ref", 1, STRING, False)],
    },
    services={
        "Content": {
            "Info": ("InfoRequest", "InfoResponse", False, False),
            "Update": ("UpdateRequest", "UpdateResponse", False, False),
            "Delete": ("DeleteContentRequest", EMPTY, False, False),
            "Write": ("WriteContentRequest", "WriteContentResponse", True, True),
            "Abort": ("AbortRequest", EMPTY, False, False),
        }
    },
)

IMAGES = ProtoFile(
    name="containerd/services/images/v1/images.proto",
    package="containerd.services.images.v1",
    deps=[*_WK, "containerd/types/descriptor.proto"],
    messages={
        "Image": [
            ("name", 1, STRING, False),
            ("labels", 2, MAP, False),
            ("target", 3, DESCRIPTOR, False),
            ("created_at", 7, TIMESTAMP, False),
            ("updated_at", 8, TIMESTAMP, False),
        ],
        "GetImageRequest": [("name", 1, STRING, False)],
        "GetImageResponse": [("image", 1, "Image", False)],
        "CreateImageRequest": [("image", 1, "Image", False)],
        "CreateImageResponse": [("image", 1, "Image", False)],
        "UpdateImageRequest": [("image", 1, "Image", False), ("update_mask", 2, FIELD_MASK, False)],
        "UpdateImageResponse": [("image", 1, "Image", False)],
        "DeleteImageRequest": [("name", 1, STRING, False), ("sync", 2, BOOL, False)],
    },
    services={
        "Images": {
            "Get": ("GetImageRequest", "GetImageResponse", False, False),
            "Create": ("CreateImageRequest", "CreateImageResponse", False, False),
            "Update": ("UpdateImageRequest", "UpdateImageResponse", False, False),
            "Delete": ("DeleteImageRequest", EMPTY, False, False),
        }
    },
)

LEASES = ProtoFile(
    name="containerd/services/leases/v1/leases.proto",
    package="containerd.services.leases.v1",
    deps=_WK,
    messages={
        "Lease": [("id", 1, STRING, False), ("created_at", 2, TIMESTAMP, False), ("labels", 3, MAP, False)],
        "CreateRequest": [("id", 1, STRING, False), ("labels", 3, MAP, False)],
        "CreateResponse": [("lease", 1, "Lease", False)],
        "DeleteRequest": [("id", 1, STRING, False), ("sync", 2, BOOL, False)],
    },
    services={
        "Leases": {
            "Create": ("CreateRequest", "CreateResponse", False, False),
            "Delete": ("DeleteRequest", EMPTY, False, False),
        }
    },
)

# The payloads map (field 3, map<string, google.protobuf.Any>) is left out: a pull sends none.
DIFF = ProtoFile(
    name="containerd/services/diff/v1/diff.proto",
    package="containerd.services.diff.v1",
    deps=["containerd/types/mount.proto", "containerd/types/descriptor.proto"],
    messages={
        "ApplyRequest": [("diff", 1, DESCRIPTOR, False), ("mounts", 2, ".containerd.types.Mount", True)],
        "ApplyResponse": [("applied", 1, DESCRIPTOR, False)],
    },
    services={"Diff": {"Apply": ("ApplyRequest", "ApplyResponse", False, False)}},
)

FILES = [DESCRIPTOR_FILE, CONTENT, IMAGES, LEASES, DIFF]
WIRE = Wire([*snapshots_wire.FILES, *FILES])


def message(pf: ProtoFile, name: str) -> Any:
    return WIRE.message(pf.qualified(name))
