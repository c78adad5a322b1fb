# GET /v1/pods
#   Request: no body, no query.
#   Response: 200 PodStatusList: the latest status of every pod on every sidecar, from the
#   sidecars' status streams (right after a restart, once every sidecar has synced or the
#   initial-sync grace period is over).
#   Status codes: 200; 401 bad token.
"""List: what the status streams brought."""

from __future__ import annotations

from aiohttp import web

from kod.http import json_model
from kod.wire import PodStatusList

from interlink.state import STORE, initial_sync


async def list_pods(request: web.Request) -> web.Response:
    await initial_sync(request.app)
    return json_model(PodStatusList(items=request.app[STORE].snapshot()))
