"""GET /healthz (no auth) -> 200 "ok" when the engine is connected and synced, else 503 with
the reason. For container health checks; carries no data."""

from __future__ import annotations

from aiohttp import web

from sidecars.docker.handlers.keys import RUNTIME


async def handle(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.ready.is_set() and runtime.engine_error is None:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=f"Docker engine not synced: {runtime.engine_error}\n")
