"""The snapshotter's errors: containerd's errdefs classes, each with the gRPC status code
containerd maps it to (spec A2.2). Clients depend on these codes: ALREADY_EXISTS is how a
remote layer says "no download needed"."""

from __future__ import annotations

import grpc


class SnapshotError(Exception):
    code = grpc.StatusCode.UNKNOWN


class NotFound(SnapshotError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SnapshotError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(SnapshotError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidArgument(SnapshotError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(SnapshotError):
    code = grpc.StatusCode.UNAVAILABLE


class NotImplemented_(SnapshotError):
    code = grpc.StatusCode.UNIMPLEMENTED
