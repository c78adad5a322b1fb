"""POST /v1/pods, body PodCreateRequest -> 201 PodStatus (the pod is set up: infra container
running, volumes written; its containers start next and their progress comes through
/v1/watch), or 200 PodStatus when a pod with that uid exists (idempotent).

400 malformed request; 401 bad token; 403 refused by the desktop policy (message names every
offending field; nothing was created); 409 another pod with that namespace/name runs here, or
this one is being deleted; 503 Docker engine unreachable or infra image missing (retry)."""

from __future__ import annotations

from aiohttp import web

from kod import wire
from kod.http import json_model, read_model
from sidecars.docker.handlers.keys import RUNTIME


async def handle(request: web.Request) -> web.Response:
    body = await read_model(request, wire.PodCreateRequest)
    status, created = await request.app[RUNTIME].create(body)
    return json_model(status, status=201 if created else 200)
