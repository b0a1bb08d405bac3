"""The `containerd.services.snapshots.v1.Snapshots` gRPC service over a `Snapshotter`:
requests decoded (`wire`), the call run, the reply encoded; a `SnapshotError` becomes its
gRPC status (`errors`), anything else UNKNOWN with its message. RPCs are serialized: each
is one metastore transaction, and SQLite has one writer anyway."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Iterator, List, Protocol, Sequence

import grpc

from nydus_hybrid import log
from nydus_hybrid.snapshotter import wire
from nydus_hybrid.snapshotter.errors import SnapshotError
from nydus_hybrid.snapshotter.metastore import Info, Kind, Usage
from nydus_hybrid.snapshotter.snapshot import Mount

LIST_BATCH = 100  # infos per List reply message


def _mounts(mounts: List[Mount]) -> List[Any]:
    m = wire.message("Mount")
    return [m(type=x.type, source=x.source, target=x.target, options=list(x.options)) for x in mounts]


def _info(info: Info) -> Any:
    out = wire.message("Info")(name=info.name, parent=info.parent, kind=int(info.kind), labels=info.labels)
    out.created_at.FromNanoseconds(info.created_ns)
    out.updated_at.FromNanoseconds(info.updated_ns)
    return out


class SnapshotBackend(Protocol):
    """What the service calls: the overlay `Snapshotter`, and the devmapper one."""

    def prepare(self, key: str, parent: str, lbls: Dict[str, str]) -> List[Mount]: ...
    def view(self, key: str, parent: str, lbls: Dict[str, str]) -> List[Mount]: ...
    def mounts(self, key: str) -> List[Mount]: ...
    def commit(self, name: str, key: str, lbls: Dict[str, str]) -> None: ...
    def remove(self, key: str) -> None: ...
    def stat(self, key: str) -> Info: ...
    def update(self, info: Info, paths: Sequence[str]) -> Info: ...
    def walk(self, exprs: Sequence[str]) -> Iterator[Info]: ...
    def usage(self, key: str) -> Usage: ...
    def cleanup(self) -> List[str]: ...


class SnapshotsService:
    def __init__(self, snapshotter: SnapshotBackend) -> None:
        self.sn = snapshotter
        self.lock = threading.RLock()

    # -- the RPCs (request message in, reply message out)

    def Prepare(self, req: Any) -> Any:
        mounts = self.sn.prepare(req.key, req.parent, dict(req.labels))
        return wire.message("PrepareSnapshotResponse")(mounts=_mounts(mounts))

    def View(self, req: Any) -> Any:
        mounts = self.sn.view(req.key, req.parent, dict(req.labels))
        return wire.message("ViewSnapshotResponse")(mounts=_mounts(mounts))

    def Mounts(self, req: Any) -> Any:
        return wire.message("MountsResponse")(mounts=_mounts(self.sn.mounts(req.key)))

    def Commit(self, req: Any) -> Any:
        self.sn.commit(req.name, req.key, dict(req.labels))
        return wire.message("Empty")()

    def Remove(self, req: Any) -> Any:
        self.sn.remove(req.key)
        return wire.message("Empty")()

    def Stat(self, req: Any) -> Any:
        return wire.message("StatSnapshotResponse")(info=_info(self.sn.stat(req.key)))

    def Update(self, req: Any) -> Any:
        i = req.info
        info = Info(i.name, i.parent, Kind(i.kind), 0, 0, dict(i.labels))
        return wire.message("UpdateSnapshotResponse")(info=_info(self.sn.update(info, list(req.update_mask.paths))))

    def List(self, req: Any) -> Iterator[Any]:
        infos = [_info(i) for i in self.sn.walk(list(req.filters))]
        for start in range(0, len(infos), LIST_BATCH):
            yield wire.message("ListSnapshotsResponse")(info=infos[start : start + LIST_BATCH])

    def Usage(self, req: Any) -> Any:
        u = self.sn.usage(req.key)
        return wire.message("UsageResponse")(size=u.size, inodes=u.inodes)

    def Cleanup(self, req: Any) -> Any:
        self.sn.cleanup()
        return wire.message("Empty")()

    # -- gRPC plumbing

    def _unary(self, name: str, fn: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def call(req: Any, ctx: grpc.ServicerContext) -> Any:
            try:
                with self.lock:
                    return fn(req)
            except SnapshotError as e:
                log.event("rpc_error", logging.DEBUG, method=name, code=e.code.name, error=str(e))
                ctx.abort(e.code, str(e))
            except Exception as e:  # a bug or an OS error: the caller still gets a status
                log.event("rpc_error", logging.WARNING, method=name, code="UNKNOWN", error=repr(e))
                ctx.abort(grpc.StatusCode.UNKNOWN, f"{name}: {e}")

        return call

    def _stream(
        self, name: str, fn: Callable[[Any], Iterator[Any]]
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        unary = self._unary(name, lambda req: list(fn(req)))

        def call(req: Any, ctx: grpc.ServicerContext) -> Iterator[Any]:
            yield from unary(req, ctx)

        return call

    def handler(self) -> grpc.GenericRpcHandler:
        handlers: Dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, (req, resp, streaming) in wire.METHODS.items():
            decode = wire.message(req).FromString
            encode = wire.message(resp).SerializeToString
            if streaming:
                handlers[name] = grpc.unary_stream_rpc_method_handler(
                    self._stream(name, getattr(self, name)), request_deserializer=decode, response_serializer=encode
                )
            else:
                handlers[name] = grpc.unary_unary_rpc_method_handler(
                    self._unary(name, getattr(self, name)), request_deserializer=decode, response_serializer=encode
                )
        return grpc.method_handlers_generic_handler(wire.SERVICE, handlers)
