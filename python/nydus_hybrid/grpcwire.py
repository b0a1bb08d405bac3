"""Protobuf wire declarations built from compact Python tables.

Each gRPC surface we speak (containerd's snapshots service, which we serve; containerd's
content, images, leases and diff services and the CRI image service, which we call) is
declared as a `ProtoFile` table. `Wire` turns a set of them into message classes through
protobuf's descriptor pool, so no protoc-generated module pins a protobuf or grpcio
version. `proto/` holds the same declarations as `.proto` files, the readable contract;
`tests/unit/test_wire.py` checks both say the same thing. grpcio does the HTTP/2 framing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    empty_pb2,
    field_mask_pb2,
    message_factory,
    timestamp_pb2,
)

F = descriptor_pb2.FieldDescriptorProto
STRING, INT64, UINT64, BYTES, BOOL = F.TYPE_STRING, F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_BYTES, F.TYPE_BOOL
MAP = "map"  # a map<string, string>
EMPTY = ".google.protobuf.Empty"
TIMESTAMP = ".google.protobuf.Timestamp"
FIELD_MASK = ".google.protobuf.FieldMask"

# (name, number, scalar type or message/enum name, repeated). A name starting with "." is
# fully qualified; any other is in the file's package.
Field = Tuple[str, int, Any, bool]
# request, response, client streaming, server streaming
Method = Tuple[str, str, bool, bool]

_WELL_KNOWN = {
    "google/protobuf/any.proto": any_pb2,
    "google/protobuf/empty.proto": empty_pb2,
    "google/protobuf/field_mask.proto": field_mask_pb2,
    "google/protobuf/timestamp.proto": timestamp_pb2,
}


@dataclass(frozen=True)
class ProtoFile:
    name: str
    package: str
    messages: Dict[str, List[Field]]
    deps: Sequence[str] = ()
    enums: Dict[str, List[Tuple[str, int]]] = field(default_factory=dict)
    services: Dict[str, Dict[str, Method]] = field(default_factory=dict)

    def qualified(self, name: str) -> str:
        return name if name.startswith(".") else f".{self.package}.{name}"


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _map_entry(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_")) + "Entry"


def _add_fields(pf: ProtoFile, msg: descriptor_pb2.DescriptorProto, fields: List[Field], enums: set[str]) -> None:
    for name, number, kind, repeated in fields:
        f = msg.field.add(name=name, number=number, json_name=_json_name(name))
        f.label = F.LABEL_REPEATED if repeated or kind == MAP else F.LABEL_OPTIONAL
        if kind == MAP:
            entry = msg.nested_type.add(name=_map_entry(name))
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=STRING, label=F.LABEL_OPTIONAL, json_name="key")
            entry.field.add(name="value", number=2, type=STRING, label=F.LABEL_OPTIONAL, json_name="value")
            f.type, f.type_name = F.TYPE_MESSAGE, _map_entry(name)
        elif isinstance(kind, str):
            f.type_name = pf.qualified(kind)
            f.type = F.TYPE_ENUM if f.type_name in enums else F.TYPE_MESSAGE
        else:
            f.type = kind


def file_descriptors(files: Iterable[ProtoFile]) -> List[descriptor_pb2.FileDescriptorProto]:
    files = list(files)
    enums = {f".{pf.package}.{e}" for pf in files for e in pf.enums}
    out = []
    for pf in files:
        fd = descriptor_pb2.FileDescriptorProto(name=pf.name, package=pf.package, syntax="proto3")
        fd.dependency.extend(pf.deps)
        for ename, values in pf.enums.items():
            e = fd.enum_type.add(name=ename)
            for vname, number in values:
                e.value.add(name=vname, number=number)
        for mname, fields in pf.messages.items():
            _add_fields(pf, fd.message_type.add(name=mname), fields, enums)
        for sname, methods in pf.services.items():
            s = fd.service.add(name=sname)
            for method, (req, resp, cstream, sstream) in methods.items():
                s.method.add(
                    name=method,
                    input_type=pf.qualified(req),
                    output_type=pf.qualified(resp),
                    client_streaming=cstream,
                    server_streaming=sstream,
                )
        out.append(fd)
    return out


class Wire:
    """The message classes of a set of files (dependencies listed before their users)."""

    def __init__(self, files: Sequence[ProtoFile]) -> None:
        self.files = list(files)
        pool = descriptor_pool.DescriptorPool()
        for module in _WELL_KNOWN.values():
            pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
        for fd in file_descriptors(self.files):
            pool.Add(fd)
        self._pool = pool
        self._classes: Dict[str, Any] = {}

    def message(self, full_name: str) -> Any:
        """The class of the message `full_name` ("containerd.types.Mount"; a leading dot
        is allowed)."""
        name = full_name.lstrip(".")
        cls = self._classes.get(name)
        if cls is None:
            cls = message_factory.GetMessageClass(self._pool.FindMessageTypeByName(name))
            self._classes[name] = cls
        return cls

    def path(self, pf: ProtoFile, service: str, method: str) -> str:
        return f"/{pf.package}.{service}/{method}"

    def method_types(self, pf: ProtoFile, service: str, method: str) -> Tuple[Any, Any]:
        req, resp, _, _ = pf.services[service][method]
        return self.message(pf.qualified(req)), self.message(pf.qualified(resp))
