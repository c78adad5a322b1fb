"""The aiohttp application of the Docker sidecar.

    settings = load_settings(DockerSidecarSettings, path, env_prefix=ENV_PREFIX)
    app = create_app(settings)        # engine client and runtime open in cleanup_ctx
    web.run_app(app, host=..., port=...)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from kod import errors
from kod.http import bearer_auth_middleware, error_middleware, request_id_middleware
from kod.log import get_logger
from sidecars.docker.engine import Engine
from sidecars.docker.handlers import add_routes
from sidecars.docker.handlers.keys import HUB, RUNTIME, SETTINGS
from sidecars.docker.hub import Hub
from sidecars.docker.runtime import Runtime
from sidecars.docker.settings import DockerSidecarSettings

log = get_logger(__name__)


def resolve_token(settings: DockerSidecarSettings) -> str:
    """The bearer token: `settings.token`, else the token file (created with a random token,
    mode 0600, when missing and `create_token` is on)."""
    if settings.token is not None:
        return settings.token.get_secret_value()
    path = settings.token_file
    if not path.exists():
        if not settings.create_token:
            raise errors.InvalidInput(
                f"token file {path} does not exist", hint="create it, or set create_token = true"
            )
        _write_secret(path, secrets.token_urlsafe(32))
        log.info("created a new bearer token", token_file=str(path))
    if path.stat().st_mode & 0o077:
        log.warning("token file is readable by others; chmod 600 it", token_file=str(path))
    token = path.read_text().strip()
    if not token:
        raise errors.InvalidInput(f"token file {path} is empty")
    return token


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")


def create_app(settings: DockerSidecarSettings) -> web.Application:
    """The sidecar's application: middlewares (request id, errors, bearer auth), routes, and the
    engine client and pod runtime, opened on startup and closed on cleanup."""
    token = resolve_token(settings)
    app = web.Application(
        middlewares=[
            request_id_middleware,
            error_middleware,
            bearer_auth_middleware(token, open_paths=frozenset({"/healthz"})),
        ]
    )
    app[SETTINGS] = settings
    hub = Hub(settings.watch_queue)
    app[HUB] = hub

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

    app.cleanup_ctx.append(runtime_ctx)
    app.on_shutdown.append(end_streams)
    add_routes(app)
    return app
