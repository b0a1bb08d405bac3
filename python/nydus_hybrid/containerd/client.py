"""A small client of containerd's own gRPC API: content, images, leases, snapshots (through
containerd, so its metadata store records them) and the diff service.

Every call carries the namespace (`containerd-namespace`), and while a lease is held, the
lease (`containerd-lease`), so what a pull writes is safe from containerd's garbage
collector until the image record and the gc labels reference it."""

from __future__ import annotations

import datetime
import errno
import os
import uuid
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import grpc

from nydus_hybrid.containerd import wire
from nydus_hybrid.errors import BackendError, NotFoundError, NydusError
from nydus_hybrid.grpcwire import ProtoFile
from nydus_hybrid.snapshotter import wire as snapshots_wire

WRITE_CHUNK = 1 << 20  # containerd's own client sends 1 MiB per message
WRITE, COMMIT = 1, 2


class ContainerdError(BackendError):
    """A containerd call failed; `code` is the gRPC status."""

    def __init__(self, call: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(errno.EIO, f"containerd {call}: {code.name}: {details}")
        self.code = code


def already_exists(e: BaseException) -> bool:
    return isinstance(e, ContainerdError) and e.code == grpc.StatusCode.ALREADY_EXISTS


def not_found(e: BaseException) -> bool:
    return isinstance(e, ContainerdError) and e.code == grpc.StatusCode.NOT_FOUND


class Client:
    def __init__(self, address: str, namespace: str = "default", timeout: float = 120.0) -> None:
        if not os.path.exists(address):
            raise NotFoundError(errno.ENOENT, f"containerd socket {address}: no such file (is containerd running?)")
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self.lease_id: Optional[str] = None
        self.channel = grpc.insecure_channel(f"unix:{address}", options=[("grpc.max_receive_message_length", 64 << 20)])

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing

    def _metadata(self) -> Tuple[Tuple[str, Union[str, bytes]], ...]:
        md: List[Tuple[str, Union[str, bytes]]] = [("containerd-namespace", self.namespace)]
        if self.lease_id:
            md.append(("containerd-lease", self.lease_id))
        return tuple(md)

    def _unary(self, pf: ProtoFile, service: str, method: str, **fields: Any) -> Any:
        req_type, resp_type = wire.WIRE.method_types(pf, service, method)
        call = self.channel.unary_unary(
            wire.WIRE.path(pf, service, method),
            request_serializer=req_type.SerializeToString,
            response_deserializer=resp_type.FromString,
        )
        try:
            return call(req_type(**fields), timeout=self.timeout, metadata=self._metadata())
        except grpc.RpcError as e:
            raise grpc_error(f"{service}.{method}", e) from None

    # -- leases

    @contextmanager
    def lease(self, expire_seconds: int = 3600) -> Iterator[str]:
        """Hold a lease for the duration: containerd collects nothing made under it. The
        lease expires by itself if this process dies."""
        lease_id = f"nydus-hybrid-{uuid.uuid4().hex[:16]}"
        self._unary(
            wire.LEASES,
            "Leases",
            "Create",
            id=lease_id,
            labels={"containerd.io/gc.expire": _rfc3339_after(expire_seconds)},
        )
        self.lease_id = lease_id
        try:
            yield lease_id
        finally:
            self.lease_id = None
            try:
                self._unary(wire.LEASES, "Leases", "Delete", id=lease_id)
            except NydusError:
                pass  # it expires on its own

    # -- content

    def content_labels(self, digest: str) -> Optional[Dict[str, str]]:
        """The labels of content `digest`, or None when containerd does not have it."""
        try:
            info = self._unary(wire.CONTENT, "Content", "Info", digest=digest).info
        except ContainerdError as e:
            if not_found(e):
                return None
            raise
        return dict(info.labels)

    def label_content(self, digest: str, labels: Dict[str, str]) -> None:
        info = wire.message(wire.CONTENT, "Info")(digest=digest, labels=labels)
        mask = wire.WIRE.message(".google.protobuf.FieldMask")(paths=[f"labels.{k}" for k in labels])
        self._unary(wire.CONTENT, "Content", "Update", info=info, update_mask=mask)

    def write_content(self, digest: str, size: int, chunks: Iterator[bytes], labels: Dict[str, str]) -> None:
        """Store content `digest` of `size` bytes, verified by containerd on commit. Content
        already there keeps its bytes and gains the labels."""
        if self.content_labels(digest) is not None:
            if labels:
                self.label_content(digest, labels)
            return
        req = wire.message(wire.CONTENT, "WriteContentRequest")
        ref = f"nydus-hybrid-{digest}"

        def requests() -> Iterator[Any]:
            offset = 0
            for data in chunks:
                yield req(action=WRITE, ref=ref, offset=offset, data=data, total=size, expected=digest)
                offset += len(data)
            yield req(action=COMMIT, ref=ref, offset=offset, total=size, expected=digest, labels=labels)

        _, resp_type = wire.WIRE.method_types(wire.CONTENT, "Content", "Write")
        call = self.channel.stream_stream(
            wire.WIRE.path(wire.CONTENT, "Content", "Write"),
            request_serializer=req.SerializeToString,
            response_deserializer=resp_type.FromString,
        )
        try:
            for _ in call(requests(), timeout=self.timeout, metadata=self._metadata()):
                pass
        except grpc.RpcError as e:
            err = grpc_error("Content.Write", e)
            if already_exists(err):  # written meanwhile by someone else: same bytes
                if labels:
                    self.label_content(digest, labels)
                return
            raise err from None

    def write_bytes(self, digest: str, data: bytes, labels: Dict[str, str]) -> None:
        self.write_content(
            digest, len(data), (data[i : i + WRITE_CHUNK] for i in range(0, len(data), WRITE_CHUNK)), labels
        )

    def write_file(self, digest: str, path: str, labels: Dict[str, str]) -> None:
        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(WRITE_CHUNK):
                    yield block

        self.write_content(digest, os.path.getsize(path), chunks(), labels)

    # -- images

    def put_image(self, name: str, target: Dict[str, Any], labels: Optional[Dict[str, str]] = None) -> None:
        """Create the image record `name`, or point an existing one at `target`."""
        image = wire.message(wire.IMAGES, "Image")(name=name, labels=labels or {}, target=descriptor(target))
        try:
            self._unary(wire.IMAGES, "Images", "Create", image=image)
        except ContainerdError as e:
            if not already_exists(e):
                raise
            mask = wire.WIRE.message(".google.protobuf.FieldMask")(paths=["target"])
            self._unary(wire.IMAGES, "Images", "Update", image=image, update_mask=mask)

    def image_target(self, name: str) -> Optional[Dict[str, Any]]:
        try:
            t = self._unary(wire.IMAGES, "Images", "Get", name=name).image.target
        except ContainerdError as e:
            if not_found(e):
                return None
            raise
        return {"mediaType": t.media_type, "digest": t.digest, "size": t.size}

    # -- snapshots, through containerd

    def _snapshots(self, method: str, **fields: Any) -> Any:
        # The snapshot messages from this client's own pool, so that the mounts Prepare
        # returns can go straight into a Diff.Apply request.
        pf = snapshots_wire.SNAPSHOTS_FILE
        req_type, resp_type = wire.WIRE.method_types(pf, "Snapshots", method)
        call = self.channel.unary_unary(
            wire.WIRE.path(pf, "Snapshots", method),
            request_serializer=req_type.SerializeToString,
            response_deserializer=resp_type.FromString,
        )
        try:
            return call(req_type(**fields), timeout=self.timeout, metadata=self._metadata())
        except grpc.RpcError as e:
            raise grpc_error(f"Snapshots.{method}", e) from None

    def snapshot_exists(self, snapshotter: str, key: str) -> bool:
        try:
            self._snapshots("Stat", snapshotter=snapshotter, key=key)
        except ContainerdError as e:
            if not_found(e):
                return False
            raise
        return True

    def prepare(self, snapshotter: str, key: str, parent: str, labels: Dict[str, str]) -> List[Any]:
        resp = self._snapshots("Prepare", snapshotter=snapshotter, key=key, parent=parent, labels=labels)
        return list(resp.mounts)

    def commit(self, snapshotter: str, name: str, key: str, labels: Dict[str, str]) -> None:
        self._snapshots("Commit", snapshotter=snapshotter, name=name, key=key, labels=labels)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        self._snapshots("Remove", snapshotter=snapshotter, key=key)

    # -- diff

    def apply(self, layer: Dict[str, Any], mounts: List[Any]) -> str:
        """Apply the layer (already in the content store) onto the mounts; the digest of
        the uncompressed layer that was applied."""
        resp = self._unary(wire.DIFF, "Diff", "Apply", diff=descriptor(layer), mounts=mounts)
        digest: str = resp.applied.digest
        return digest


def descriptor(d: Dict[str, Any]) -> Any:
    return wire.message(wire.DESCRIPTOR_FILE, "Descriptor")(
        media_type=d.get("mediaType", ""),
        digest=d["digest"],
        size=int(d.get("size", 0)),
        annotations=d.get("annotations") or {},
    )


def grpc_error(call: str, e: grpc.RpcError) -> ContainerdError:
    # What grpcio raises is also a grpc.Call, with the status; the stubs cannot say so.
    code = getattr(e, "code", lambda: grpc.StatusCode.UNKNOWN)()
    details = getattr(e, "details", lambda: None)() or str(e)
    return ContainerdError(call, code, details)


def _rfc3339_after(seconds: int) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
