# GET /v1/watch
#   Request: no body.
#   Response: 200 application/x-ndjson, one WatchEvent per line: first a SYNC with every pod
#   interlink knows (after the initial-sync grace period on a fresh start), then a STATUS or
#   DELETED event per change, and a HEARTBEAT after each `watch.heartbeat_seconds` of silence.
#   A client that falls `watch.client_queue` events behind is disconnected; it reconnects and
#   gets a fresh SYNC. The stream also ends when interlink shuts down.
#   Status codes: 200; 401 bad token.
"""Watch: interlink's own status push, fed by the hub."""

from __future__ import annotations

import asyncio

from aiohttp import web

from kod.log import get_logger
from kod.wire import NDJSON, WatchEvent

from interlink.hub import event_line
from interlink.state import HUB, SETTINGS, STORE, initial_sync

log = get_logger(__name__)

_HEARTBEAT = event_line(WatchEvent(type="HEARTBEAT"))


async def watch(request: web.Request) -> web.StreamResponse:
    await initial_sync(request.app)
    heartbeat = request.app[SETTINGS].watch.heartbeat_seconds

    def drop() -> None:
        if request.transport is not None:
            request.transport.close()

    # Subscribing and taking the snapshot without an `await` in between: every change after the
    # snapshot is in the queue, none before it is.
    response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    sub = request.app[HUB].subscribe(on_drop=drop)
    try:
        sync = WatchEvent(type="SYNC", pods=request.app[STORE].snapshot())
        await response.prepare(request)
        await response.write(event_line(sync))
        while True:
            try:
                line = await asyncio.wait_for(sub.get(), heartbeat)
            except TimeoutError:
                line = _HEARTBEAT
            if line is None:
                break
            await response.write(line)
    except ConnectionResetError:
        log.debug("watch client went away")
    finally:
        request.app[HUB].unsubscribe(sub)
    return response
