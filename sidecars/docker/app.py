"""The aiohttp application of the Docker sidecar.

    settings = load_settings(DockerSidecarSettings, path, env_prefix=ENV_PREFIX)
    app = create_app(settings)        # engine client and runtime open in cleanup_ctx
    await kod.service.serve_app(app, settings.listen, ...)    # as sidecars.docker.main does
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from kod.http import bearer_auth_middleware, error_middleware, request_id_middleware
from kod.hub import Hub
from kod.routes import SIDECAR, open_paths
from kod.tokens import server_token
from sidecars.docker.engine import Engine
from sidecars.docker.handlers import add_routes
from sidecars.docker.handlers.keys import HUB, RUNTIME, SETTINGS, SOCKETS
from sidecars.docker.runtime import Runtime
from sidecars.docker.settings import DockerSidecarSettings


def create_app(settings: DockerSidecarSettings) -> web.Application:
    """The sidecar's application: middlewares (request id, errors, bearer auth), routes, and the
    engine client and pod runtime, opened on startup and closed on cleanup."""
    # A token file its group or others can read is refused (kod.tokens), as interlink does.
    token = server_token(settings.token, settings.token_file, create=settings.create_token)
    app = web.Application(
        middlewares=[
            request_id_middleware,
            error_middleware,
            bearer_auth_middleware(token, open_paths=open_paths(SIDECAR)),
        ]
    )
    app[SETTINGS] = settings
    hub = Hub(settings.watch_queue)
    app[HUB] = hub
    app[SOCKETS] = set()

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        engine = Engine(settings.docker_url, timeout=settings.docker_timeout_seconds)
        runtime = Runtime(settings, engine, hub)
        app[RUNTIME] = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            await engine.close()

    async def end_streams(app: web.Application) -> None:
        hub.close()  # watch streams end, so shutdown does not wait for them
        for ws in list(app[SOCKETS]):  # and so do exec, attach and port-forward streams
            await ws.close()

    app.cleanup_ctx.append(runtime_ctx)
    app.on_shutdown.append(end_streams)
    add_routes(app)
    return app
