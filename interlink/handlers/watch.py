# GET /v1/watch
#   Request: no body.
#   Response: 200 application/x-ndjson, one WatchEvent per line: first a SYNC with every pod
#   interlink knows (after the initial-sync grace period on a fresh start), then a STATUS or
#   DELETED event per change, and a HEARTBEAT after each `watch.heartbeat_seconds` of silence.
#   A client that falls `watch.client_queue` events behind is disconnected; it reconnects and
#   gets a fresh SYNC. The stream also ends when interlink shuts down.
#   Status codes: 200; 401 bad token.
"""Watch: interlink's own status push, fed by the hub (`kod.watch_serve`)."""

from __future__ import annotations

from aiohttp import web

from kod.watch_serve import serve_watch

from interlink.state import HUB, SETTINGS, STORE, initial_sync


async def watch(request: web.Request) -> web.StreamResponse:
    await initial_sync(request.app)
    return await serve_watch(
        request,
        request.app[HUB],
        snapshot=request.app[STORE].snapshot,
        heartbeat_seconds=request.app[SETTINGS].watch.heartbeat_seconds,
    )
