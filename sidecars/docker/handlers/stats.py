"""GET /v1/stats -> 200 UsageReport: the desktop's CPU time, memory and disk, and each running
container's CPU time and memory (sidecars.docker.usage); what could not be read is named in
`errors`. 503 while the engine has not synced yet (after `ready_timeout_seconds`)."""

from __future__ import annotations

from aiohttp import web

from kod.http import json_model
from sidecars.docker.handlers.keys import RUNTIME


async def handle(request: web.Request) -> web.Response:
    return json_model(await request.app[RUNTIME].usage())
