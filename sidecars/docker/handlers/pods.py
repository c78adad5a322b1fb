"""GET /v1/pods -> 200 PodStatusList of every pod this sidecar runs (including pods being
deleted). 503 until the first sync with the Docker engine."""

from __future__ import annotations

from aiohttp import web

from kod import wire
from kod.http import json_model
from sidecars.docker.handlers.keys import RUNTIME


async def handle(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    await runtime.wait_ready()
    return json_model(wire.PodStatusList(items=runtime.list()))
