# GET /v1/pods/{namespace}/{name}/portforward?port=N
#   Request: no body; query: port.
#   Response: 101, a WebSocket of `kod.streams` channels (one TCP connection to the pod's
#   localhost:N), relayed message by message to and from the pod's sidecar.
#   Status codes (before the upgrade, with the message in X-Kod-Error too): 400 bad port, nothing
#   listens on it, or the sandbox is not running; 401 bad token; 404 no such pod; 503 the sidecar
#   cannot be reached.
"""port-forward: a pass-through WebSocket to the pod's sidecar."""

from __future__ import annotations

from aiohttp import web

from kod import errors, streams

from interlink.handlers.common import pod_ref
from interlink.state import SIDECARS, locate


async def port_forward(request: web.Request) -> web.StreamResponse:
    try:
        namespace, name = pod_ref(request)
        options = streams.parse_port_query(request.query)
        sidecar = await locate(request.app, namespace, name)
        upstream = await sidecar.api.websocket(f"/v1/pods/{namespace}/{name}/portforward", params={"port": options.port})
    except errors.KodError as exc:
        return streams.refusal(exc)
    sockets = request.app[SIDECARS].sockets
    downstream: web.WebSocketResponse | None = None
    try:
        downstream = await streams.accept(request)
        sockets.add(downstream)
        await streams.relay(downstream, upstream)
    finally:
        if downstream is not None:
            sockets.discard(downstream)
        await upstream.close()
    return downstream
