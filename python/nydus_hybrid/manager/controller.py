"""The manager's HTTP API on ``<root>/system.sock`` (after the snapshotter's system controller,
spec A12), which the CLI and tests use: daemons, instances, hot upgrade. Errors are
``{"code": "Unknown", "message": ...}``."""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from aiohttp import web

from nydus_hybrid.manager.errors import ManagerError
from nydus_hybrid.manager.manager import Manager

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

T = TypeVar("T")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"code": "Unknown", "message": message}, status)


class Controller:
    def __init__(self, manager: Manager):
        self.m = manager
        self.lock = asyncio.Lock()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self.lock:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ManagerError as e:
            return _error(500, str(e))
        except (ValueError, KeyError, TypeError) as e:
            return _error(400, f"bad request: {e}")
        except web.HTTPException as e:
            return _error(e.status, e.reason)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.errors], client_max_size=1 << 20)
        app.router.add_get("/api/v1/daemons", self.daemons)
        app.router.add_put("/api/v1/daemons/upgrade", self.upgrade)
        app.router.add_get("/api/v1/instances", self.instances)
        app.router.add_post("/api/v1/instances", self.mount)
        app.router.add_delete("/api/v1/instances/{key}", self.umount)
        return app

    async def daemons(self, request: web.Request) -> web.Response:
        return _json(self.m.describe())

    async def instances(self, request: web.Request) -> web.Response:
        return _json(self.m.describe()["instances"])

    async def mount(self, request: web.Request) -> web.Response:
        doc = await request.json()
        if not isinstance(doc, dict):
            raise ValueError("the body must be a JSON object")
        rec = await self._run(
            self.m.mount, str(doc["snapshot_id"]), str(doc.get("image_id", "")), str(doc["bootstrap"]), doc["config"]
        )
        return _json(rec)

    async def umount(self, request: web.Request) -> web.Response:
        await self._run(self.m.umount, request.match_info["key"])
        return web.Response(status=204)

    async def upgrade(self, request: web.Request) -> web.Response:
        doc = await request.json() if request.body_exists else {}
        nydusd = doc.get("nydusd")
        done = await self._run(self.m.upgrade, doc.get("daemon_id"), nydusd)
        return _json({"upgraded": done})


async def serve(manager: Manager, path: str) -> web.AppRunner:
    runner = web.AppRunner(Controller(manager).app(), access_log=None, handle_signals=False)
    await runner.setup()
    if os.path.lexists(path):
        os.unlink(path)
    await web.UnixSite(runner, path).start()
    os.chmod(path, 0o600)
    return runner
