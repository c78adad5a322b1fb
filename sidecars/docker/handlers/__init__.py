"""HTTP handlers of the Docker sidecar, one per file; each file starts with what it takes and
returns. The API is the InterLink API of `kod.wire`."""

from __future__ import annotations

from aiohttp import web

from kod.wire import API_PREFIX
from sidecars.docker.handlers import create, delete, get, health, logs, pods, ping, watch


def add_routes(app: web.Application) -> None:
    """Register every route of the sidecar."""
    app.router.add_get("/healthz", health.handle)
    app.router.add_get(f"{API_PREFIX}/ping", ping.handle)
    app.router.add_post(f"{API_PREFIX}/pods", create.handle)
    app.router.add_get(f"{API_PREFIX}/pods", pods.handle)
    app.router.add_get(f"{API_PREFIX}/pods/{{namespace}}/{{name}}", get.handle)
    app.router.add_delete(f"{API_PREFIX}/pods/{{namespace}}/{{name}}", delete.handle)
    app.router.add_get(f"{API_PREFIX}/pods/{{namespace}}/{{name}}/containers/{{container}}/logs", logs.handle)
    app.router.add_get(f"{API_PREFIX}/watch", watch.handle)
