"""GET /v1/watch -> 200 application/x-ndjson, one WatchEvent per line: first a SYNC with every
pod, then STATUS (a pod's status changed) and DELETED (a pod is gone) as Docker events drive
them, and a HEARTBEAT whenever nothing else was sent for `heartbeat_seconds`. The stream ends
when the client falls too far behind or the sidecar stops; reconnecting gives a fresh SYNC.
503 until the first sync with the Docker engine."""

from __future__ import annotations

import asyncio

from aiohttp import web

from kod import wire
from sidecars.docker.handlers.keys import HUB, RUNTIME, SETTINGS


def _line(event: wire.WatchEvent) -> bytes:
    return event.model_dump_json(exclude_none=True, by_alias=True).encode() + b"\n"


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    await runtime.wait_ready()
    heartbeat = request.app[SETTINGS].heartbeat_seconds
    response = web.StreamResponse(headers={"Content-Type": wire.NDJSON, "Cache-Control": "no-store"})
    with request.app[HUB].subscribe() as sub:
        # Subscribed before the snapshot: a change racing with it arrives after it, never lost.
        await response.prepare(request)
        try:
            await response.write(_line(wire.WatchEvent(type="SYNC", pods=runtime.list())))
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), heartbeat)
                except TimeoutError:
                    event = wire.WatchEvent(type="HEARTBEAT")
                if event is None:
                    break
                await response.write(_line(event))
        except ConnectionResetError:
            return response
    await response.write_eof()
    return response
