"""The aiohttp application of the Slurm sidecar (the Docker sidecar's shape: middlewares, the
route table of kod.routes, the runtime opened in cleanup_ctx)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from kod.http import bearer_auth_middleware, error_middleware, request_id_middleware
from kod.hub import Hub
from kod.routes import SIDECAR, open_paths
from kod.tokens import server_token
from sidecars.slurm.handlers import HUB, RUNTIME, SETTINGS, add_routes
from sidecars.slurm.runtime import Runtime
from sidecars.slurm.settings import SlurmSidecarSettings


def create_app(settings: SlurmSidecarSettings) -> web.Application:
    token = server_token(settings.token, settings.token_file, create=settings.create_token)
    app = web.Application(middlewares=[
        request_id_middleware, error_middleware, bearer_auth_middleware(token, open_paths=open_paths(SIDECAR))])
    app[SETTINGS] = settings
    hub = Hub(settings.watch_queue)
    app[HUB] = hub

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        runtime = Runtime(settings, hub)
        app[RUNTIME] = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    async def end_streams(app: web.Application) -> None:
        hub.close()

    app.cleanup_ctx.append(runtime_ctx)
    app.on_shutdown.append(end_streams)
    add_routes(app)
    return app
