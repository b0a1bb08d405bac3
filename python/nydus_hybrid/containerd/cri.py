"""A client of the CRI image service (runtime.v1), as the kubelet drives containerd's CRI
plugin: `PullImage` pulls and unpacks through the snapshotter the CRI plugin is configured
with, adding the `cri.*` snapshot labels when `disable_snapshot_annotations = false`."""

from __future__ import annotations

import base64
import errno
import os
from typing import Any, Optional

import grpc

from nydus_hybrid import criwire
from nydus_hybrid.containerd.client import ContainerdError, grpc_error
from nydus_hybrid.errors import NotFoundError


class CriImages:
    def __init__(self, address: str, timeout: float = 600.0) -> None:
        if not os.path.exists(address):
            raise NotFoundError(errno.ENOENT, f"CRI socket {address}: no such file (is containerd running?)")
        self.channel = grpc.insecure_channel(f"unix:{address}")
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CriImages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, **fields: Any) -> Any:
        req_type, resp_type = criwire.WIRE.method_types(criwire.CRI, "ImageService", method)
        call = self.channel.unary_unary(
            criwire.WIRE.path(criwire.CRI, "ImageService", method),
            request_serializer=req_type.SerializeToString,
            response_deserializer=resp_type.FromString,
        )
        try:
            return call(req_type(**fields), timeout=self.timeout)
        except grpc.RpcError as e:
            raise grpc_error(f"ImageService.{method}", e) from None

    def pull(self, image: str, creds: Optional[str] = None) -> str:
        """Pull `image` ("HOST/REPO:TAG"); `creds` is "USER:PASS". Returns the image id."""
        spec = criwire.message("ImageSpec")(image=image)
        auth = None
        if creds is not None:
            user, _, password = creds.partition(":")
            auth = criwire.message("AuthConfig")(
                username=user, password=password, auth=base64.b64encode(creds.encode()).decode()
            )
        resp = self._call("PullImage", image=spec, auth=auth)
        ref: str = resp.image_ref
        return ref

    def remove(self, image: str) -> None:
        self._call("RemoveImage", image=criwire.message("ImageSpec")(image=image))


__all__ = ["ContainerdError", "CriImages"]
