"""PUT /v1/pods/{namespace}/{name}/volumes VolumeUpdate -> 200 VolumeUpdateResult once every
named volume holds its new files (swapped atomically; unchanged ones are left alone).

400 a volume that is not a content volume of the pod, or this sidecar cannot update volumes in
place (it does not see the engine's host paths); 404 no such pod (or not with that uid); 503 the
pod is not set up, is being deleted, or its tmpfs has no room for the new files."""

from __future__ import annotations

from aiohttp import web

from kod import wire
from kod.http import json_model, read_model
from sidecars.docker.handlers.keys import RUNTIME


async def handle(request: web.Request) -> web.Response:
    update = await read_model(request, wire.VolumeUpdate)
    ns, name = request.match_info["namespace"], request.match_info["name"]
    return json_model(await request.app[RUNTIME].update_volumes(ns, name, update))
