"""Every route of interlink, in one place (the same table as `interlink.openapi.OPERATIONS`)."""

from __future__ import annotations

from aiohttp import web

from kod.wire import API_PREFIX

from interlink.handlers.create_pod import create_pod
from interlink.handlers.delete_pod import delete_pod
from interlink.handlers.get_pod import get_pod
from interlink.handlers.list_pods import list_pods
from interlink.handlers.openapi_doc import openapi_doc
from interlink.handlers.ping import ping
from interlink.handlers.pod_logs import pod_logs
from interlink.handlers.watch import watch

#: Paths that need no token.
OPEN_PATHS = frozenset({"/openapi.json"})


def add_routes(app: web.Application) -> None:
    """Register the handlers on `app`."""
    pod = API_PREFIX + "/pods/{namespace}/{name}"
    app.router.add_get(API_PREFIX + "/ping", ping)
    app.router.add_post(API_PREFIX + "/pods", create_pod)
    app.router.add_get(API_PREFIX + "/pods", list_pods)
    app.router.add_get(pod, get_pod)
    app.router.add_delete(pod, delete_pod)
    app.router.add_get(pod + "/containers/{container}/logs", pod_logs)
    app.router.add_get(API_PREFIX + "/watch", watch)
    app.router.add_get("/openapi.json", openapi_doc)
