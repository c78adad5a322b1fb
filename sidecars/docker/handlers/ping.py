"""GET /v1/ping -> 200 NodeInfo: capacity (settings, else the engine's CPUs and memory), pods
limit, labels, taints, and this sidecar's health (`sidecars[0].ok` is false, with a message,
while the Docker engine is unreachable). Right after a start it waits for the first sync with the
engine (at most `ready_timeout_seconds`); it never fails because the engine is away."""

from __future__ import annotations

import contextlib

from aiohttp import web

from kod import errors
from kod.http import json_model
from sidecars.docker.handlers.keys import RUNTIME


async def handle(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    with contextlib.suppress(errors.Unavailable):
        await runtime.wait_ready()
    return json_model(runtime.node_info())
