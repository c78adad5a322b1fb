"""interlink's handlers, registered from the route table of `kod.routes` (the one the OpenAPI
document is generated from)."""

from __future__ import annotations

from aiohttp import web

from kod.routes import INTERLINK
from kod.routes import add_routes as add_table_routes

from interlink.handlers.container_stream import attach_container, exec_container
from interlink.handlers.create_pod import create_pod
from interlink.handlers.delete_pod import delete_pod
from interlink.handlers.get_pod import get_pod
from interlink.handlers.list_pods import list_pods
from interlink.handlers.openapi_doc import openapi_doc
from interlink.handlers.ping import ping
from interlink.handlers.pod_logs import pod_logs
from interlink.handlers.port_forward import port_forward
from interlink.handlers.stats import stats
from interlink.handlers.update_volumes import update_volumes
from interlink.handlers.watch import watch

#: Operation id (kod.routes) -> handler.
HANDLERS = {
    "ping": ping,
    "createPod": create_pod,
    "listPods": list_pods,
    "getPod": get_pod,
    "deletePod": delete_pod,
    "updateVolumes": update_volumes,
    "podLogs": pod_logs,
    "watch": watch,
    "openapi": openapi_doc,
    "execContainer": exec_container,
    "attachContainer": attach_container,
    "portForward": port_forward,
    "stats": stats,
}


def add_routes(app: web.Application) -> None:
    """Register the handlers on `app`."""
    add_table_routes(app, INTERLINK, HANDLERS)
