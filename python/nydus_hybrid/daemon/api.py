"""The HTTP API on the unix socket (spec §1-2, contract in ``openapi.yaml``), on aiohttp.

HTTP/1.1 keep-alive with no idle timeout: the snapshotter watches an idle connection for
HUP to learn that the daemon died, so a connection is never closed by us. Bodyless PUTs
accept a missing or empty body. Every error is ``{"code": "UNDEFINED", "message": ...}``
with the status mapping of §1.2. Requests run one at a time, as in nydusd; blocking work
runs in a thread so the event loop keeps every connection alive meanwhile."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar

from aiohttp import web

from nydus_hybrid.daemon.errors import BadRequest, DaemonError, Unsupported
from nydus_hybrid.daemon.fuse_service import check_virtual_mountpoint

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

    from nydus_hybrid.daemon.base import BaseDaemon  # base imports this module

# Large enough for any real request; a bigger body gets 413 before it is read.
MAX_BODY = 1 << 20
# aiohttp closes idle keep-alive connections after this; "never" is a very long time.
NEVER = 10.0**9
HEADERS = {"Server": "Nydus API"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_T = TypeVar("_T")


def ok(body: Any = None, status: int = 200) -> web.Response:
    if body is None:
        return web.Response(status=204, headers=HEADERS)
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=HEADERS)


def error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"code": "UNDEFINED", "message": message}),
        content_type="application/json",
        headers=HEADERS,
    )


def error_middleware(record: Callable[[str], None]) -> Middleware:
    """Every failure becomes the JSON error shape; server-side (5xx) ones also go to the
    daemon's event ring (`/daemon/events`)."""

    @web.middleware
    async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            # Spec §1.2: a GET with a body is a bad request, on every route.
            if (
                request.method == "GET"
                and request.match_info.http_exception is None
                and request.body_exists
                and await request.read()
            ):
                raise BadRequest("BadRequest")
            return await handler(request)
        except DaemonError as e:
            if e.status >= 500:
                record(f"{request.method} {request.path}: {e.message}")
            return error(e.status, e.message)
        except web.HTTPNotFound:
            return error(404, "NoRoute")
        except web.HTTPMethodNotAllowed:
            return error(400, "BadRequest")
        except web.HTTPRequestEntityTooLarge:
            return error(413, f'PayloadTooLarge("request body above {MAX_BODY} bytes")')
        except web.HTTPException as e:
            return error(e.status, e.reason or "BadRequest")
        except Exception as e:  # an API bug must not take the daemon down
            logging.getLogger("nydus_hybrid.daemon").exception("api handler failed")
            record(f"{request.method} {request.path}: internal error {type(e).__name__}: {e}")
            return error(500, f"Internal({type(e).__name__}: {e})")

    return errors_as_json


async def no_body(request: web.Request) -> None:
    """Bodyless requests: no body, or an empty one (Content-Length: 0), only."""
    if request.body_exists and await request.read():
        raise BadRequest("BadRequest")


async def json_body(request: web.Request) -> Dict[str, Any]:
    raw = await request.read()
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
        self.lock = asyncio.Lock()

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Blocking daemon work, one request at a time, off the event loop."""
        async with self.lock:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[error_middleware(self.d.events.add)])
        r = app.router
        for v in ("v1", "v2"):
            r.add_get(f"/api/{v}/daemon", self.daemon_info_v1 if v == "v1" else self.daemon_info_v2)
            r.add_put(f"/api/{v}/daemon", self.set_log_level)
        r.add_get("/api/v1/daemon/events", self.events)
        r.add_get("/api/v1/daemon/backend", self.daemon_backend)
        r.add_put("/api/v1/daemon/start", self.start)
        r.add_put("/api/v1/daemon/exit", self.exit)
        r.add_put("/api/v1/daemon/fuse/sendfd", self.sendfd)
        r.add_put("/api/v1/daemon/fuse/takeover", self.takeover)
        r.add_post("/api/v1/mount", self.mount)
        r.add_put("/api/v1/mount", self.remount)
        r.add_delete("/api/v1/mount", self.umount)
        r.add_get("/api/v1/metrics", self.metrics)
        r.add_get("/api/v1/metrics/files", self.metrics_files)
        r.add_get("/api/v1/metrics/pattern", self.metrics_pattern)
        r.add_get("/api/v1/metrics/backend", self.metrics_backend)
        r.add_get("/api/v1/metrics/blobcache", self.metrics_blobcache)
        r.add_get("/api/v1/metrics/inflight", self.metrics_inflight)
        r.add_get("/api/v1/metrics/prometheus", self.metrics_prometheus)
        r.add_get("/api/v1/config", self.get_config)
        r.add_put("/api/v1/config", self.put_config)
        for method in ("GET", "PUT", "DELETE"):
            r.add_route(method, "/api/v2/blobs", self.blobs)
        return app

    # --- daemon ---------------------------------------------------------------------------

    async def daemon_info_v1(self, request: web.Request) -> web.Response:
        return ok(self.d.info(backends=True))

    async def daemon_info_v2(self, request: web.Request) -> web.Response:
        return ok(self.d.info(backends=False))

    async def set_log_level(self, request: web.Request) -> web.Response:
        doc = await json_body(request)
        self.d.set_log_level(field(doc, "log_level"))
        return ok()

    async def events(self, request: web.Request) -> web.Response:
        return ok(self.d.events.to_json())

    async def daemon_backend(self, request: web.Request) -> web.Response:
        return ok(await self.run(self.d.backend_meta, request.query.get("mountpoint")))

    async def start(self, request: web.Request) -> web.Response:
        await no_body(request)
        await self.run(self.d.start)
        return ok()

    async def exit(self, request: web.Request) -> web.Response:
        await no_body(request)
        await self.run(self.d.exit)
        return ok()

    async def sendfd(self, request: web.Request) -> web.Response:
        await no_body(request)
        await self.run(self.d.sendfd)
        return ok()

    async def takeover(self, request: web.Request) -> web.Response:
        await no_body(request)
        await self.run(self.d.takeover)
        return ok()

    # --- mounts ---------------------------------------------------------------------------

    async def _mount_cmd(self, request: web.Request) -> Tuple[str, str, str, Optional[List[str]]]:
        """(mountpoint, source, config, prefetch_files), checked in nydusd's order: the
        query, then the body's types, then the values."""
        mountpoint = check_virtual_mountpoint(request.query.get("mountpoint"))
        doc = await json_body(request)
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

    async def mount(self, request: web.Request) -> web.Response:
        mountpoint, source, config, prefetch = await self._mount_cmd(request)
        await self.run(self.d.service.add, mountpoint, source, config, prefetch)
        await self.run(self.d.mounts_changed)
        return ok()

    async def remount(self, request: web.Request) -> web.Response:
        mountpoint, source, config, _ = await self._mount_cmd(request)
        await self.run(self.d.service.remount, mountpoint, source, config)
        await self.run(self.d.mounts_changed)
        return ok()

    async def umount(self, request: web.Request) -> web.Response:
        await no_body(request)
        await self.run(self.d.service.remove, request.query.get("mountpoint"))
        await self.run(self.d.mounts_changed)
        return ok()

    # --- metrics --------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        return ok(self.d.service.fs_metrics(request.query.get("id")))

    async def metrics_files(self, request: web.Request) -> web.Response:
        latest = request.query.get("latest") == "true"
        return ok(self.d.service.files_metrics(request.query.get("id"), latest))

    async def metrics_pattern(self, request: web.Request) -> web.Response:
        return ok(self.d.service.access_pattern(request.query.get("id")))

    async def metrics_backend(self, request: web.Request) -> web.Response:
        return ok(self.d.service.backend_metrics(request.query.get("id")))

    async def metrics_blobcache(self, request: web.Request) -> web.Response:
        return ok(self.d.service.blobcache_metrics(request.query.get("id")))

    async def metrics_inflight(self, request: web.Request) -> web.Response:
        ops = self.d.service.inflight()
        return ok(ops) if ops else ok()  # nothing in flight is 204, no body

    async def metrics_prometheus(self, request: web.Request) -> web.Response:
        return web.Response(text=self.d.prometheus(), content_type="text/plain", headers=HEADERS)

    # --- hot-reload configuration ---------------------------------------------------------

    async def get_config(self, request: web.Request) -> web.Response:
        return ok(self.d.runtime_config.get(request.query.get("id")))

    async def put_config(self, request: web.Request) -> web.Response:
        doc = await json_body(request)
        self.d.runtime_config.put(request.query.get("id", ""), doc)
        return ok()

    async def blobs(self, request: web.Request) -> web.Response:
        """/api/v2/blobs (spec §2.2): DELETE picks removal (``domain_id``) or cull
        (``blob_id`` alone) from its query."""
        q = request.query
        if request.method == "PUT":
            doc = await json_body(request)
            await self.run(self.d.blob_add, doc)
        elif request.method == "DELETE":
            await no_body(request)
            if "domain_id" in q:
                await self.run(self.d.blob_remove, q["domain_id"], q.get("blob_id", ""))
            elif "blob_id" in q:
                await self.run(self.d.blob_cull, q["blob_id"])
            else:
                raise BadRequest("BadRequest: domain_id or blob_id is required")
        else:
            if "domain_id" not in q:
                raise BadRequest("BadRequest: domain_id is required")
            return ok(await self.run(self.d.blob_entries, q["domain_id"], q.get("blob_id", "")))
        return ok()


class JsonErrorHandler(web.RequestHandler):
    """aiohttp answers a request it cannot parse (a garbled request line, a bad header) on
    its own, in plain text, before any middleware runs. This gives those answers the API's
    JSON error body too; the status and the closed connection stay aiohttp's."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: Optional[BaseException] = None,
        message: Optional[str] = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs, and refuses once bytes went out
        resp = error(plain.status, message or (str(exc) if exc else "") or plain.reason or "BadRequest")
        resp.force_close()
        return resp


class ApiSite(web.UnixSite):
    """A unix-socket site whose connections use `JsonErrorHandler`."""

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None  # set up by the runner before its sites start
        # aiohttp annotates access_log as a Logger, but None (no access log) is what its own
        # runner passes on when asked for access_log=None, as serve() does.
        self._server = await loop.create_unix_server(
            lambda: JsonErrorHandler(server, loop=loop, keepalive_timeout=NEVER, access_log=None),  # type: ignore[arg-type]
            self._path,
        )


async def serve(api: Api, sock_path: str) -> web.AppRunner:
    runner = web.AppRunner(api.app(), keepalive_timeout=NEVER, handle_signals=False, access_log=None)
    await runner.setup()
    site = ApiSite(runner, sock_path)
    await site.start()
    return runner
