"""The server side of the pushed status, `GET /v1/watch`, the same on interlink and every sidecar.

    async def watch(request):                  # a handler of the service
        await wait_until_synced()              # what the service must know before its SYNC
        return await serve_watch(request, hub, snapshot=store.snapshot, heartbeat_seconds=10)

The answer is `application/x-ndjson`, one `WatchEvent` per line: first a SYNC with every pod the
service knows, then what the hub publishes (STATUS, DELETED) in order, and a HEARTBEAT after
each `heartbeat_seconds` of silence. The stream ends cleanly when the hub closes (shutdown); a
client that falls behind is cut (`kod.hub`) and reconnects for a fresh SYNC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiohttp import web

from kod.hub import Hub, event_line
from kod.log import get_logger
from kod.wire import NDJSON, PodStatus, WatchEvent

log = get_logger(__name__)

_HEARTBEAT = event_line(WatchEvent(type="HEARTBEAT"))


async def serve_watch(
    request: web.Request,
    hub: Hub,
    *,
    snapshot: Callable[[], Sequence[PodStatus]],
    heartbeat_seconds: float,
) -> web.StreamResponse:
    """Stream the watch to one client until the hub ends it or the client goes away.
    `snapshot()` gives every pod now; it is taken right after subscribing, with no `await` in
    between, so every change after the snapshot is in the queue and none before it is."""

    def drop() -> None:
        # The client fell behind: closing its connection also wakes a writer stuck on it.
        if request.transport is not None:
            request.transport.close()

    response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
    with hub.subscribe(on_drop=drop) as sub:
        sync = WatchEvent(type="SYNC", pods=list(snapshot()))
        try:
            await response.prepare(request)
            await response.write(event_line(sync))
            while True:
                try:
                    line = await asyncio.wait_for(sub.get(), heartbeat_seconds)
                except TimeoutError:
                    line = _HEARTBEAT
                if line is None:
                    break
                await response.write(line)
        except ConnectionResetError:
            log.debug("watch client went away", dropped=sub.dropped)
            return response
    if not sub.dropped:
        await response.write_eof()
    return response
