"""GET /v1/watch -> 200 application/x-ndjson, one WatchEvent per line: first a SYNC with every
pod, then STATUS (a pod's status changed) and DELETED (a pod is gone) as Docker events drive
them, and a HEARTBEAT whenever nothing else was sent for `heartbeat_seconds`. The stream ends
when the client falls too far behind or the sidecar stops; reconnecting gives a fresh SYNC.
503 until the first sync with the Docker engine."""

from __future__ import annotations

from aiohttp import web

from kod.watch_serve import serve_watch
from sidecars.docker.handlers.keys import HUB, RUNTIME, SETTINGS


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    await runtime.wait_ready()
    return await serve_watch(
        request, request.app[HUB], snapshot=runtime.list, heartbeat_seconds=request.app[SETTINGS].heartbeat_seconds
    )
