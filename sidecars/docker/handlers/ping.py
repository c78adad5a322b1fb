"""GET /v1/ping -> 200 NodeInfo: capacity (settings, else the engine's CPUs and memory), pods
limit, labels, taints, and this sidecar's health (`sidecars[0].ok` is false, with a message,
while the Docker engine is unreachable). Never waits for the engine."""

from __future__ import annotations

from aiohttp import web

from kod.http import json_model
from sidecars.docker.handlers.keys import RUNTIME


async def handle(request: web.Request) -> web.Response:
    return json_model(request.app[RUNTIME].node_info())
