"""The HTTP API on the unix socket (spec §1-2, contract in ``openapi.yaml``), on the
standard library's ``http.server`` (it parses the requests; this module routes them).

Why not aiohttp, which served it before: importing it took about 145 ms of the daemon's
start (the whole daemon now imports in less than that), and the API needs nothing of an
event loop: a thread per connection, few connections, requests one at a time.

HTTP/1.1 keep-alive with no idle timeout: the snapshotter watches an idle connection for
HUP to learn that the daemon died, so a connection is never closed by us. Bodyless PUTs
accept a missing or empty body. Every error, the parser's own refusals included, is
``{"code": "UNDEFINED", "message": ...}`` with the status of §1.2."""

from __future__ import annotations

import http.server
import json
import logging
import socketserver
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar

from nydus_hybrid.daemon.errors import BadRequest, DaemonError, NoRoute, Unsupported
from nydus_hybrid.daemon.fuse_service import check_virtual_mountpoint

if TYPE_CHECKING:
    from nydus_hybrid.daemon.base import BaseDaemon  # base imports this module

# Large enough for any real request; a bigger body gets 413 (read and dropped first, so the
# client sees the answer rather than a reset, up to DRAIN_LIMIT).
MAX_BODY = 1 << 20
DRAIN_LIMIT = 64 << 20
SERVER = "Nydus API"
_T = TypeVar("_T")


# Plain classes, not dataclasses: that import alone costs the daemon's start several ms.
class Request:
    __slots__ = ("body", "method", "path", "query")

    def __init__(self, method: str, path: str, query: Dict[str, str], body: bytes = b""):
        self.method = method
        self.path = path
        self.query = query  # the first value of each key
        self.body = body


class Reply:
    __slots__ = ("body", "content_type", "status")

    def __init__(self, status: int, body: bytes = b"", content_type: str = "application/json"):
        self.status = status
        self.body = body
        self.content_type = content_type


def ok(body: Any = None, status: int = 200) -> Reply:
    if body is None:
        return Reply(204)
    return Reply(status, json.dumps(body).encode())


def error(status: int, message: str) -> Reply:
    return Reply(status, json.dumps({"code": "UNDEFINED", "message": message}).encode())


def no_body(request: Request) -> None:
    """Bodyless requests: no body, or an empty one (Content-Length: 0), only."""
    if request.body:
        raise BadRequest("BadRequest")


def json_body(request: Request) -> Dict[str, Any]:
    raw = request.body
    if not raw:
        raise BadRequest("BadRequest")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"ParseBody(Error({str(e)!r}))") from e
    if not isinstance(doc, dict):
        raise BadRequest('ParseBody(Error("expected a JSON object"))')
    return doc


def field(doc: Dict[str, Any], name: str, kind: type = str, required: bool = True) -> Any:
    value = doc.get(name)
    if value is None:
        if required:
            raise BadRequest(f'ParseBody(Error("missing field `{name}`"))')
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadRequest(f'ParseBody(Error("invalid type for field `{name}`"))')
    return value


class Api:
    """Routes bound to a daemon object (``nydus_hybrid.daemon.main.Daemon``)."""

    def __init__(self, daemon: BaseDaemon):
        self.d = daemon
        self.lock = threading.Lock()
        self.routes = self._routes()

    def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Daemon work that changes or walks its instances: one request at a time, as in
        nydusd (reads of state and metrics answer meanwhile)."""
        with self.lock:
            return fn(*args)

    def _routes(self) -> Dict[str, Dict[str, Callable[[Request], Reply]]]:
        r: Dict[str, Dict[str, Callable[[Request], Reply]]] = {}

        def add(method: str, path: str, handler: Callable[[Request], Reply]) -> None:
            r.setdefault(path, {})[method] = handler

        for v in ("v1", "v2"):
            add("GET", f"/api/{v}/daemon", self.daemon_info_v1 if v == "v1" else self.daemon_info_v2)
            add("PUT", f"/api/{v}/daemon", self.set_log_level)
        add("GET", "/api/v1/daemon/events", self.events)
        add("GET", "/api/v1/daemon/backend", self.daemon_backend)
        add("PUT", "/api/v1/daemon/start", self.start)
        add("PUT", "/api/v1/daemon/exit", self.exit)
        add("PUT", "/api/v1/daemon/fuse/sendfd", self.sendfd)
        add("PUT", "/api/v1/daemon/fuse/takeover", self.takeover)
        add("POST", "/api/v1/mount", self.mount)
        add("PUT", "/api/v1/mount", self.remount)
        add("DELETE", "/api/v1/mount", self.umount)
        add("GET", "/api/v1/metrics", self.metrics)
        add("GET", "/api/v1/metrics/files", self.metrics_files)
        add("GET", "/api/v1/metrics/pattern", self.metrics_pattern)
        add("GET", "/api/v1/metrics/backend", self.metrics_backend)
        add("GET", "/api/v1/metrics/blobcache", self.metrics_blobcache)
        add("GET", "/api/v1/metrics/inflight", self.metrics_inflight)
        add("GET", "/api/v1/metrics/prometheus", self.metrics_prometheus)
        add("GET", "/api/v1/config", self.get_config)
        add("PUT", "/api/v1/config", self.put_config)
        for method in ("GET", "PUT", "DELETE"):
            add(method, "/api/v2/blobs", self.blobs)
        return r

    def handle(self, request: Request) -> Reply:
        """Route one request; every failure becomes the JSON error shape, and server-side
        (5xx) ones also go to the daemon's event ring (`/daemon/events`)."""
        try:
            methods = self.routes.get(request.path)
            if methods is None:
                raise NoRoute("NoRoute")
            handler = methods.get(request.method)
            if handler is None:
                raise BadRequest("BadRequest")
            # Spec §1.2: a GET with a body is a bad request, on every route.
            if request.method == "GET" and request.body:
                raise BadRequest("BadRequest")
            return handler(request)
        except DaemonError as e:
            if e.status >= 500:
                self.d.events.add(f"{request.method} {request.path}: {e.message}")
            return error(e.status, e.message)
        except Exception as e:  # an API bug must not take the daemon down
            logging.getLogger("nydus_hybrid.daemon").exception("api handler failed")
            self.d.events.add(f"{request.method} {request.path}: internal error {type(e).__name__}: {e}")
            return error(500, f"Internal({type(e).__name__}: {e})")

    # --- daemon ---------------------------------------------------------------------------

    def daemon_info_v1(self, request: Request) -> Reply:
        return ok(self.d.info(backends=True))

    def daemon_info_v2(self, request: Request) -> Reply:
        return ok(self.d.info(backends=False))

    def set_log_level(self, request: Request) -> Reply:
        doc = json_body(request)
        self.d.set_log_level(field(doc, "log_level"))
        return ok()

    def events(self, request: Request) -> Reply:
        return ok(self.d.events.to_json())

    def daemon_backend(self, request: Request) -> Reply:
        return ok(self.run(self.d.backend_meta, request.query.get("mountpoint")))

    def start(self, request: Request) -> Reply:
        no_body(request)
        self.run(self.d.start)
        return ok()

    def exit(self, request: Request) -> Reply:
        no_body(request)
        self.run(self.d.exit)
        return ok()

    def sendfd(self, request: Request) -> Reply:
        no_body(request)
        self.run(self.d.sendfd)
        return ok()

    def takeover(self, request: Request) -> Reply:
        no_body(request)
        self.run(self.d.takeover)
        return ok()

    # --- mounts ---------------------------------------------------------------------------

    def _mount_cmd(self, request: Request) -> Tuple[str, str, str, Optional[List[str]]]:
        """(mountpoint, source, config, prefetch_files), checked in nydusd's order: the
        query, then the body's types, then the values."""
        mountpoint = check_virtual_mountpoint(request.query.get("mountpoint"))
        doc = json_body(request)
        if "fs_type" in doc and not isinstance(doc["fs_type"], str):
            raise BadRequest('ParseBody(Error("invalid type for field `fs_type`"))')
        fs_type = field(doc, "fs_type", required=False) or ""
        source = field(doc, "source")
        config = field(doc, "config")
        prefetch = field(doc, "prefetch_files", list, required=False)
        if prefetch is not None and not all(isinstance(p, str) for p in prefetch):
            raise BadRequest('ParseBody(Error("invalid type for field `prefetch_files`: expected strings"))')
        if fs_type != "rafs":
            if fs_type in ("passthrough", "passthroughfs", "passthrough_fs"):
                raise Unsupported(f'Mount(Unsupported("fs_type {fs_type}"))')
            raise DaemonError(f'Mount(InvalidArguments("fs_type {fs_type!r}"))')
        return mountpoint, source, config, prefetch

    def mount(self, request: Request) -> Reply:
        mountpoint, source, config, prefetch = self._mount_cmd(request)
        self.run(self.d.service.add, mountpoint, source, config, prefetch)
        self.run(self.d.mounts_changed)
        return ok()

    def remount(self, request: Request) -> Reply:
        mountpoint, source, config, _ = self._mount_cmd(request)
        self.run(self.d.service.remount, mountpoint, source, config)
        self.run(self.d.mounts_changed)
        return ok()

    def umount(self, request: Request) -> Reply:
        no_body(request)
        self.run(self.d.service.remove, request.query.get("mountpoint"))
        self.run(self.d.mounts_changed)
        return ok()

    # --- metrics --------------------------------------------------------------------------

    def metrics(self, request: Request) -> Reply:
        return ok(self.d.service.fs_metrics(request.query.get("id")))

    def metrics_files(self, request: Request) -> Reply:
        latest = request.query.get("latest") == "true"
        return ok(self.d.service.files_metrics(request.query.get("id"), latest))

    def metrics_pattern(self, request: Request) -> Reply:
        return ok(self.d.service.access_pattern(request.query.get("id")))

    def metrics_backend(self, request: Request) -> Reply:
        return ok(self.d.service.backend_metrics(request.query.get("id")))

    def metrics_blobcache(self, request: Request) -> Reply:
        return ok(self.d.service.blobcache_metrics(request.query.get("id")))

    def metrics_inflight(self, request: Request) -> Reply:
        ops = self.d.service.inflight()
        return ok(ops) if ops else ok()  # nothing in flight is 204, no body

    def metrics_prometheus(self, request: Request) -> Reply:
        return Reply(200, self.d.prometheus().encode(), "text/plain; charset=utf-8")

    # --- hot-reload configuration ---------------------------------------------------------

    def get_config(self, request: Request) -> Reply:
        return ok(self.d.runtime_config.get(request.query.get("id")))

    def put_config(self, request: Request) -> Reply:
        doc = json_body(request)
        self.d.runtime_config.put(request.query.get("id", ""), doc)
        return ok()

    def blobs(self, request: Request) -> Reply:
        """/api/v2/blobs (spec §2.2): DELETE picks removal (``domain_id``) or cull
        (``blob_id`` alone) from its query."""
        q = request.query
        if request.method == "PUT":
            doc = json_body(request)
            self.run(self.d.blob_add, doc)
        elif request.method == "DELETE":
            no_body(request)
            if "domain_id" in q:
                self.run(self.d.blob_remove, q["domain_id"], q.get("blob_id", ""))
            elif "blob_id" in q:
                self.run(self.d.blob_cull, q["blob_id"])
            else:
                raise BadRequest("BadRequest: domain_id or blob_id is required")
        else:
            if "domain_id" not in q:
                raise BadRequest("BadRequest: domain_id is required")
            return ok(self.run(self.d.blob_entries, q["domain_id"], q.get("blob_id", "")))
        return ok()


class _Connection(http.server.BaseHTTPRequestHandler):
    """One client connection: parse (the standard library), read the body, route (``Api``)."""

    protocol_version = "HTTP/1.1"
    server: _UnixServer

    def __getattr__(self, name: str) -> Any:
        # `do_<METHOD>` for every method: a known path with another method is our 400,
        # not the library's 501.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def version_string(self) -> str:
        return SERVER

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:  # no access log
        pass

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The parser's refusals (bad request line, version, header size): a 400 in the
        API's error shape, and the connection closed (it may be out of step). Always with
        a status line: an unparsed request line leaves the library at HTTP/0.9, which has none."""
        self.request_version = self.protocol_version
        self._send(error(400, message or "BadRequest"), close=True)

    def _dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query: Dict[str, str] = {}
        for key, value in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
            query.setdefault(key, value)
        body, refusal = self._read_body()
        if refusal is not None:
            self._send(refusal, close=True)
            return
        reply = self.server.api.handle(Request(self.command, url.path or "/", query, body))
        self._send(reply)

    def _read_body(self) -> Tuple[bytes, Optional[Reply]]:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            return b"", error(411, "LengthRequired: send the body with a Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b"", None
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            return b"", error(400, f"BadRequest: invalid Content-Length {raw!r}")
        if length > MAX_BODY:
            if length <= DRAIN_LIMIT:
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            return b"", error(413, f'PayloadTooLarge("request body above {MAX_BODY} bytes")')
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
        return body, None

    def _send(self, reply: Reply, close: bool = False) -> None:
        try:
            self.send_response(reply.status)
            if reply.status != 204:
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if reply.status != 204:
                self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:  # the client went away
            self.close_connection = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # a connection idle forever must not hold the exit
    block_on_close = False

    def __init__(self, path: str, api: Api):
        self.api = api
        super().__init__(path, _Connection)


class ApiServer:
    """The listening socket and its accept loop, in a thread."""

    def __init__(self, api: Api, sock_path: str):
        self.server = _UnixServer(sock_path, api)
        self.thread = threading.Thread(target=self.server.serve_forever, name="api", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(api: Api, sock_path: str) -> ApiServer:
    return ApiServer(api, sock_path)
