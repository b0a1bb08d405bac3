"""Registry credentials for the images the snapshotter mounts (spec A11), looked up in
nydus-snapshotter's order: the image's snapshot labels (`pullusername` / `pullsecret`),
then credentials captured from the kubelet's CRI pulls, then docker's `config.json` (read
by the daemon's registry backend itself when no credentials are given).

The CRI capture (`enable_cri_keychain`): the snapshotter's socket also serves the CRI image
service (`runtime.v1` and `runtime.v1alpha2` `ImageService`) as a proxy to containerd's
(`image_service_address`). Every call is forwarded unchanged, byte for byte; a `PullImage`
that carries credentials leaves them here first, keyed by the image's registry host, so the
image's daemon can read the blobs with them."""

from __future__ import annotations

import base64
import threading
from typing import Any, Callable, Dict, Optional

import grpc

from nydus_hybrid import criwire, log
from nydus_hybrid.convert.reference import parse_registry
from nydus_hybrid.errors import InvalidArgumentError

PULL_USERNAME = "containerd.io/snapshot/pullusername"
PULL_SECRET = "containerd.io/snapshot/pullsecret"
CRI_SERVICES = ("/runtime.v1.ImageService/", "/runtime.v1alpha2.ImageService/")


class Keychain:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._captured: Dict[str, Dict[str, str]] = {}

    def capture(self, image: str, auth: Any) -> None:
        """Keep the credentials of a CRI PullImage request for the image's registry."""
        fields = _auth_fields(auth.username, auth.password, auth.auth, auth.registry_token or auth.identity_token)
        if not fields:
            return
        try:
            host = parse_registry(image).api_host
        except InvalidArgumentError:
            return
        with self._lock:
            self._captured[host] = fields
        log.event("cri_credentials_captured", host=host)

    def backend_auth(self, host: str, labels: Dict[str, str]) -> Dict[str, str]:
        """The registry backend's auth fields for an image on `host` (empty: the backend
        falls back to docker's config.json)."""
        if labels.get(PULL_USERNAME) or labels.get(PULL_SECRET):
            return _auth_fields(labels.get(PULL_USERNAME, ""), labels.get(PULL_SECRET, ""), "", "")
        with self._lock:
            return dict(self._captured.get(host, {}))


def _auth_fields(username: str, password: str, auth: str, token: str) -> Dict[str, str]:
    if token:
        return {"registry_token": token}
    if auth:
        return {"auth": auth}
    if username or password:
        return {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    return {}


class CriImageProxy(grpc.GenericRpcHandler):
    """Serves the CRI image service by forwarding it to `upstream` (a unix socket)."""

    def __init__(self, keychain: Keychain, upstream: str) -> None:
        self.keychain = keychain
        self.channel = grpc.insecure_channel(f"unix:{upstream}")
        self._pull_request = criwire.message("PullImageRequest")

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Optional[grpc.RpcMethodHandler[Any, Any]]:
        method: str = handler_call_details.method
        if not method.startswith(CRI_SERVICES):
            return None
        forward: Any = self.channel.unary_unary(method)  # bytes in, bytes out
        capture = method.endswith("/PullImage")
        return grpc.unary_unary_rpc_method_handler(self._forwarder(forward, capture, method))

    def _forwarder(self, forward: Any, capture: bool, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def call(raw: bytes, ctx: grpc.ServicerContext) -> bytes:
            if capture:
                try:
                    req = self._pull_request.FromString(raw)
                    self.keychain.capture(req.image.image, req.auth)
                except Exception as e:  # a request we cannot read is still forwarded
                    log.event("cri_capture_failed", method=method, error=str(e))
            try:
                reply: bytes = forward(raw, timeout=ctx.time_remaining())
                return reply
            except grpc.RpcError as e:
                # What grpcio raises is also a grpc.Call, with the status; the stubs cannot say so.
                code = getattr(e, "code", lambda: grpc.StatusCode.UNAVAILABLE)()
                ctx.abort(code, getattr(e, "details", lambda: None)() or str(e))

        return call

    def close(self) -> None:
        self.channel.close()
