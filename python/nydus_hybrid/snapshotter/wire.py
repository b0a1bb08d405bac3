"""The wire format of containerd's snapshots service, declared here in Python (spec A2.2).

`proto/` holds the same declarations as `.proto` files, the readable contract; this module
builds the message descriptors from a compact table instead of importing protoc's
generated code, so no generated module pins a protobuf or grpcio version.
`tests/unit/test_snapshotter_wire.py` checks that both say the same thing, field by field.
grpcio does the HTTP/2 framing; protobuf encodes the messages."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, field_mask_pb2, message_factory, timestamp_pb2

SERVICE = "containerd.services.snapshots.v1.Snapshots"
PACKAGE = "containerd.services.snapshots.v1"

_F = descriptor_pb2.FieldDescriptorProto
# (name, number, type or message name, repeated)
_Field = Tuple[str, int, Any, bool]

_MOUNT: List[_Field] = [
    ("type", 1, _F.TYPE_STRING, False),
    ("source", 2, _F.TYPE_STRING, False),
    ("target", 3, _F.TYPE_STRING, False),
    ("options", 4, _F.TYPE_STRING, True),
]

_S = _F.TYPE_STRING
_MAP = "map"  # a map<string, string>
_MOUNTS = ".containerd.types.Mount"

_MESSAGES: Dict[str, List[_Field]] = {
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
        ("created_at", 4, ".google.protobuf.Timestamp", False),
        ("updated_at", 5, ".google.protobuf.Timestamp", False),
        ("labels", 6, _MAP, False),
    ],
    "StatSnapshotResponse": [("info", 1, f".{PACKAGE}.Info", False)],
    "UpdateSnapshotRequest": [
        ("snapshotter", 1, _S, False),
        ("info", 2, f".{PACKAGE}.Info", False),
        ("update_mask", 3, ".google.protobuf.FieldMask", False),
    ],
    "UpdateSnapshotResponse": [("info", 1, f".{PACKAGE}.Info", False)],
    "ListSnapshotsRequest": [("snapshotter", 1, _S, False), ("filters", 2, _S, True)],
    "ListSnapshotsResponse": [("info", 1, f".{PACKAGE}.Info", True)],
    "UsageRequest": [("snapshotter", 1, _S, False), ("key", 2, _S, False)],
    "UsageResponse": [("size", 1, _F.TYPE_INT64, False), ("inodes", 2, _F.TYPE_INT64, False)],
    "CleanupRequest": [("snapshotter", 1, _S, False)],
}

KIND_VALUES = [("UNKNOWN", 0), ("VIEW", 1), ("ACTIVE", 2), ("COMMITTED", 3)]

# method: (request, response, server-streaming)
METHODS: Dict[str, Tuple[str, str, bool]] = {
    "Prepare": ("PrepareSnapshotRequest", "PrepareSnapshotResponse", False),
    "View": ("ViewSnapshotRequest", "ViewSnapshotResponse", False),
    "Mounts": ("MountsRequest", "MountsResponse", False),
    "Commit": ("CommitSnapshotRequest", ".google.protobuf.Empty", False),
    "Remove": ("RemoveSnapshotRequest", ".google.protobuf.Empty", False),
    "Stat": ("StatSnapshotRequest", "StatSnapshotResponse", False),
    "Update": ("UpdateSnapshotRequest", "UpdateSnapshotResponse", False),
    "List": ("ListSnapshotsRequest", "ListSnapshotsResponse", True),
    "Usage": ("UsageRequest", "UsageResponse", False),
    "Cleanup": ("CleanupRequest", ".google.protobuf.Empty", False),
}


def _add_fields(msg: descriptor_pb2.DescriptorProto, fields: List[_Field]) -> None:
    for name, number, kind, repeated in fields:
        f = msg.field.add(name=name, number=number, json_name=_json_name(name))
        f.label = _F.LABEL_REPEATED if repeated or kind == _MAP else _F.LABEL_OPTIONAL
        if kind == _MAP:
            entry = msg.nested_type.add(name=_map_entry(name))
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=_S, label=_F.LABEL_OPTIONAL, json_name="key")
            entry.field.add(name="value", number=2, type=_S, label=_F.LABEL_OPTIONAL, json_name="value")
            f.type, f.type_name = _F.TYPE_MESSAGE, _map_entry(name)
        elif isinstance(kind, str):
            f.type_name = kind
            f.type = _F.TYPE_ENUM if kind.endswith(".Kind") else _F.TYPE_MESSAGE
        else:
            f.type = kind


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _map_entry(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_")) + "Entry"


def _qualified(name: str) -> str:
    return name if name.startswith(".") else f".{PACKAGE}.{name}"


def file_descriptors() -> List[descriptor_pb2.FileDescriptorProto]:
    mount = descriptor_pb2.FileDescriptorProto(
        name="containerd/types/mount.proto", package="containerd.types", syntax="proto3"
    )
    _add_fields(mount.message_type.add(name="Mount"), _MOUNT)
    snaps = descriptor_pb2.FileDescriptorProto(
        name="containerd/services/snapshots/v1/snapshots.proto", package=PACKAGE, syntax="proto3"
    )
    snaps.dependency.extend(
        [
            "google/protobuf/empty.proto",
            "google/protobuf/field_mask.proto",
            "google/protobuf/timestamp.proto",
            "containerd/types/mount.proto",
        ]
    )
    kind = snaps.enum_type.add(name="Kind")
    for name, number in KIND_VALUES:
        kind.value.add(name=name, number=number)
    for name, fields in _MESSAGES.items():
        _add_fields(snaps.message_type.add(name=name), fields)
    service = snaps.service.add(name="Snapshots")
    for method, (req, resp, stream) in METHODS.items():
        service.method.add(
            name=method, input_type=_qualified(req), output_type=_qualified(resp), server_streaming=stream
        )
    return [mount, snaps]


def _load() -> Dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    for well_known in (empty_pb2, field_mask_pb2, timestamp_pb2):
        pool.AddSerializedFile(well_known.DESCRIPTOR.serialized_pb)
    for fd in file_descriptors():
        pool.Add(fd)
    classes = {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in _MESSAGES
    }
    classes["Mount"] = message_factory.GetMessageClass(pool.FindMessageTypeByName("containerd.types.Mount"))
    classes["Empty"] = message_factory.GetMessageClass(pool.FindMessageTypeByName("google.protobuf.Empty"))
    classes[".google.protobuf.Empty"] = classes["Empty"]  # as METHODS names it
    return classes


MESSAGES = _load()


def message(name: str) -> Any:
    """The message class `name` ("PrepareSnapshotRequest", "Mount", "Empty"), or of a
    method's request or response type as METHODS names it."""
    return MESSAGES[name]
