"""HTTP handlers of the Docker sidecar, one per file; each file starts with what it takes and
returns. The API is the InterLink API of `kod.wire`; the routes come from the table of
`kod.routes` (the one the OpenAPI document is generated from)."""

from __future__ import annotations

from aiohttp import web

from kod.routes import SIDECAR
from kod.routes import add_routes as add_table_routes
from sidecars.docker.handlers import create, delete, exec_attach, get, health, logs, pods, ping, portforward, stats, volumes, watch

#: Operation id (kod.routes) -> handler.
HANDLERS = {
    "healthz": health.handle,
    "ping": ping.handle,
    "createPod": create.handle,
    "listPods": pods.handle,
    "getPod": get.handle,
    "deletePod": delete.handle,
    "updateVolumes": volumes.handle,
    "podLogs": logs.handle,
    "watch": watch.handle,
    "execContainer": exec_attach.handle_exec,
    "attachContainer": exec_attach.handle_attach,
    "portForward": portforward.handle,
    "stats": stats.handle,
}


def add_routes(app: web.Application) -> None:
    """Register every route of the sidecar."""
    add_table_routes(app, SIDECAR, HANDLERS)
