"""Our gRPC wire declarations (`snapshotter.wire`, `containerd.wire`) against `proto/`, compiled by
the real protoc (grpcio-tools): the same messages, fields, numbers, types, enum values and
methods. Either side changing alone fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

from google.protobuf import descriptor_pb2

from nydus_hybrid import criwire, grpcwire
from nydus_hybrid.containerd import wire as client_wire
from nydus_hybrid.snapshotter import wire

PROTO = Path(__file__).resolve().parents[2] / "proto"


def compiled(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "set.binpb"
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--descriptor_set_out={out}", *files],
        check=True,
        cwd=PROTO,
    )
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def shape(fd: descriptor_pb2.FileDescriptorProto) -> Dict[str, Any]:
    def fields(m):
        return sorted((f.name, f.number, f.type, f.type_name.split(".")[-1], f.label) for f in m.field)

    return {
        "package": fd.package,
        "messages": {m.name: (fields(m), {n.name: fields(n) for n in m.nested_type}) for m in fd.message_type},
        "enums": {e.name: [(v.name, v.number) for v in e.value] for e in fd.enum_type},
        "methods": {
            s.name: sorted(
                (x.name, x.input_type, x.output_type, x.client_streaming, x.server_streaming) for x in s.method
            )
            for s in fd.service
        },
    }


def test_the_python_declarations_equal_the_proto_files(tmp_path):
    theirs = {fd.name: shape(fd) for fd in compiled(tmp_path).file}
    ours = {fd.name: shape(fd) for fd in grpcwire.file_descriptors([*wire.FILES, *client_wire.FILES, *criwire.FILES])}
    assert ours == theirs


def test_messages_round_trip_on_the_wire():
    req = wire.message("CommitSnapshotRequest")(name="n", key="k", labels={"a": "b"}, parent="p")
    back = wire.message("CommitSnapshotRequest").FromString(req.SerializeToString())
    assert (back.name, back.key, dict(back.labels), back.parent) == ("n", "k", {"a": "b"}, "p")
    # Field 2 of CommitSnapshotRequest is the name, as containerd sends it.
    assert req.SerializeToString().startswith(b"\x12\x01n")


def test_the_content_write_request_encodes_as_containerd_reads_it():
    req = client_wire.message(client_wire.CONTENT, "WriteContentRequest")(action=2, ref="r", total=3, labels={"k": "v"})
    raw = req.SerializeToString()
    # action (field 1, varint 2), ref (field 2), total (field 3, varint 3)
    assert raw.startswith(b"\x08\x02\x12\x01r\x18\x03")
    back = client_wire.message(client_wire.CONTENT, "WriteContentRequest").FromString(raw)
    assert dict(back.labels) == {"k": "v"}
