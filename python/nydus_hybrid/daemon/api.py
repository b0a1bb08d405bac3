"""The HTTP API on the unix socket (spec §1-2, contract in ``openapi.yaml``): httptools
(llhttp, Node's HTTP parser) parses the requests, ``socketserver`` gives a thread per
connection, and this module bounds, routes and answers them.

Why httptools: the API is on the path to RUNNING of every dedicated-mode daemon start.
Imported over the same base (argparse, logging, json, socket), aiohttp.web took ~145 ms,
the standard library's ``http.server`` (which served before, with http.client, email and
ssl) ~22 ms, h11 ~18 ms (its events are dataclasses), httptools ~1-2 ms (a C extension).
The API needs nothing of an event loop: few connections, requests one at a time.

HTTP/1.1 keep-alive with no idle timeout: the snapshotter watches an idle connection for
HUP to learn that the daemon died, so a connection is never closed by us. Bodyless PUTs
accept a missing or empty body. Every error, the parser's own refusals included, is
``{"code": "UNDEFINED", "message": ...}`` with the status of §1.2."""

from __future__ import annotations

import http
import json
import logging
import socket
import socketserver
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar

import httptools

from nydus_hybrid.daemon.errors import BadRequest, DaemonError, NoRoute, Unsupported
from nydus_hybrid.daemon.fuse_service import check_virtual_mountpoint

if TYPE_CHECKING:
    from nydus_hybrid.daemon.base import BaseDaemon  # base imports this module

# Large enough for any real request; a bigger body gets 413 (read and dropped first, so the
# client sees the answer rather than a reset, up to DRAIN_LIMIT).
MAX_BODY = 1 << 20
DRAIN_LIMIT = 64 << 20
# The request line and headers are bounded as http.server bounded them.
MAX_LINE = 1 << 16
MAX_HEADERS = 100
MAX_HEADER_BYTES = 1 << 16
LINGER_S = 1.0  # after our last answer, how long a closing connection waits for the client's end
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


class _Message:
    """What the parser has seen of one request."""

    __slots__ = (
        "body",
        "complete",
        "continue_sent",
        "expect",
        "header_bytes",
        "headers",
        "headers_done",
        "refusal",
        "url",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: Dict[str, str] = {}  # lower-cased names, the first value of each
        self.header_bytes = 0
        self.headers_done = False
        self.expect = False  # Expect: 100-continue, not yet answered
        self.continue_sent = False
        self.body = bytearray()
        self.refusal: Optional[Reply] = None  # answered once the request is complete


class _Connection(socketserver.BaseRequestHandler):
    """One client connection: httptools parses, this class bounds and collects each request,
    ``Api`` routes it, and the reply is written here. Requests are answered in order; a
    parse error or a refusal is answered and closes the connection (it may be out of step)."""

    server: _UnixServer

    def setup(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.msg: Optional[_Message] = None
        self.ready: List[Tuple[_Message, str, bool]] = []  # (request, method, keep-alive)
        self.stop: Optional[Reply] = None  # refuse now, before the rest of the request
        self.head_bytes = 0  # fed since the current request began, while its head is incomplete
        self.closing = False  # answer what is complete, then close

    # --- parser callbacks (httptools calls these from feed_data) --------------------------

    def on_message_begin(self) -> None:
        self.msg = _Message()
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        m = self._current()
        m.url += url
        if len(m.url) > MAX_LINE:
            self.stop = error(400, "BadRequest: request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        m = self._current()
        m.header_bytes += len(name) + len(value) + 4
        if len(m.headers) >= MAX_HEADERS or m.header_bytes > MAX_HEADER_BYTES:
            self.stop = error(400, "BadRequest: too many or too large headers")
            return
        key = name.decode("latin-1").lower()
        if key == "transfer-encoding":  # any, even a repeated "identity": bodies need a length
            self.stop = error(411, "LengthRequired: send the body with a Content-Length")
            return
        m.headers.setdefault(key, value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        m = self._current()
        m.headers_done = True
        h = m.headers
        if h.get("transfer-encoding", "identity").lower() != "identity":
            self.stop = error(411, "LengthRequired: send the body with a Content-Length")
            return
        length = int(h.get("content-length", "0"))  # the parser has checked its digits
        if length > MAX_BODY:
            refusal = error(413, f'PayloadTooLarge("request body above {MAX_BODY} bytes")')
            if length > DRAIN_LIMIT:
                self.stop = refusal
                return
            m.refusal = refusal  # read and dropped first, so the client sees the answer
        m.expect = h.get("expect", "").lower() == "100-continue" and self.parser.get_http_version() != "1.0"

    def on_body(self, body: bytes) -> None:
        m = self._current()
        if m.refusal is None:
            if len(m.body) + len(body) > MAX_BODY:  # never more than the length allowed
                self.stop = error(413, f'PayloadTooLarge("request body above {MAX_BODY} bytes")')
                return
            m.body += body

    def on_message_complete(self) -> None:
        m = self._current()
        self.msg = None
        if self.stop is not None:
            return  # refused while it was parsed: answered by the refusal alone
        method = self.parser.get_method().decode("latin-1")
        self.ready.append((m, method, self.parser.should_keep_alive()))

    def _current(self) -> _Message:
        if self.msg is None:  # not reached: llhttp begins every message
            self.msg = _Message()
        return self.msg

    # --- the connection -------------------------------------------------------------------

    def handle(self) -> None:
        self._serve()
        self._linger()

    def _linger(self) -> None:
        """Shut our side, then read (and drop) what the client still sends before closing: a
        unix socket closed with unread data resets its peer, whose read of our last answer
        then fails. Bounded by DRAIN_LIMIT and LINGER_S."""
        sock: socket.socket = self.request
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            left = DRAIN_LIMIT
            while left > 0 and time.monotonic() < deadline:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            pass

    def _serve(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                # The client half-closed: a request whose headers arrived is answered with
                # the body it got (its handler judges it), then the connection ends.
                m = self.msg
                if m is not None and m.headers_done and self.stop is None:
                    self.ready.append((m, self.parser.get_method().decode("latin-1"), False))
                self._answer_ready()
                return
            if self.msg is None or not self.msg.headers_done:
                # The parser keeps a header's bytes until it ends: bound them as they come.
                self.head_bytes += len(data)
                if self.head_bytes > MAX_LINE + MAX_HEADER_BYTES:
                    self._answer_ready()
                    self._send(error(400, "BadRequest: request head too large"), close=True)
                    return
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                # Upgrade is ignored, as a server may (RFC 9110 §7.8): the request is answered,
                # but the parser reads nothing after it, so the connection then closes.
                self.closing = True
            except httptools.HttpParserError as e:
                self.stop = self.stop or error(400, f"BadRequest: {e}")
            if not self._answer_ready() or self.closing:
                return
            if self.stop is not None:
                self._send(self.stop, close=True)
                return
            m = self.msg
            if m is not None and m.expect and not m.continue_sent:
                m.continue_sent = True
                if not self._write(b"HTTP/1.1 100 Continue\r\n\r\n"):
                    return

    def _answer_ready(self) -> bool:
        """Answer the complete requests in order; False once the connection is to close."""
        ready, self.ready = self.ready, []
        for m, method, keep in ready:
            keep = keep and not self.closing
            if m.refusal is not None:
                self._send(m.refusal, close=True)
                return False
            query: Dict[str, str] = {}
            try:
                url = urllib.parse.urlsplit(m.url.decode("latin-1"))
                for key, value in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
                    query.setdefault(key, value)
            except ValueError as e:  # e.g. "//[": urlsplit refuses it
                self._send(error(400, f"BadRequest: {e}"), close=True)
                return False
            reply = self.server.api.handle(Request(method, url.path or "/", query, bytes(m.body)))
            if not self._send(reply, close=not keep) or not keep:
                return False
        return True

    def _send(self, reply: Reply, close: bool = False) -> bool:
        try:
            phrase = http.HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = ""
        head = [f"HTTP/1.1 {reply.status} {phrase}", f"Server: {SERVER}", f"Date: {_http_date()}"]
        if reply.status != 204:
            head += [f"Content-Type: {reply.content_type}", f"Content-Length: {len(reply.body)}"]
        if close:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        return self._write(data + reply.body if reply.status != 204 else data)

    def _write(self, data: bytes) -> bool:
        try:
            self.request.sendall(data)
            return True
        except OSError:  # the client went away
            return False


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _http_date() -> str:
    """RFC 9110's IMF-fixdate, without a locale."""
    t = time.gmtime()
    clock = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} {clock} GMT"


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
