"""GET /v1/pods/{namespace}/{name} -> 200 PodStatus; 404 when no such pod runs here."""

from __future__ import annotations

from aiohttp import web

from kod.http import json_model
from sidecars.docker.handlers.keys import RUNTIME


async def handle(request: web.Request) -> web.Response:
    ns, name = request.match_info["namespace"], request.match_info["name"]
    return json_model(await request.app[RUNTIME].get(ns, name))
