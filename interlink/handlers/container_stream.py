# GET /v1/pods/{namespace}/{name}/containers/{container}/exec?<ExecOptions>
# GET /v1/pods/{namespace}/{name}/containers/{container}/attach?<ExecOptions>
#   Request: no body; query: command (repeated: the argv), stdin, stdout, stderr, tty.
#   Response: 101, a WebSocket of `kod.streams` channels, relayed message by message to and from
#   the sidecar that holds the pod (which sends the final STATUS and closes).
#   Status codes (before the upgrade, with the message in X-Kod-Error too): 400 bad query or path,
#   or the container is not running; 401 bad token; 404 no such pod or container; 503 the
#   sidecar cannot be reached.
"""exec and attach: a pass-through WebSocket to the pod's sidecar."""

from __future__ import annotations

from aiohttp import web

from kod import errors, streams
from kod.log import get_logger, pod_context

from interlink.handlers.common import path_name, pod_ref
from interlink.state import SIDECARS, locate

log = get_logger(__name__)


async def _relay(request: web.Request, what: str) -> web.StreamResponse:
    try:
        namespace, name = pod_ref(request)
        container = path_name(request, "container", label=True)
        options = streams.parse_exec_query(request.query)
        sidecar = await locate(request.app, namespace, name)
        upstream = await sidecar.api.websocket(
            f"/v1/pods/{namespace}/{name}/containers/{container}/{what}", params=streams.exec_query(options)
        )
    except errors.KodError as exc:
        return streams.refusal(exc)
    sockets = request.app[SIDECARS].sockets
    downstream: web.WebSocketResponse | None = None
    try:
        downstream = await streams.accept(request)
        sockets.add(downstream)
        log.debug("stream relayed", stream=what, sidecar=sidecar.name, **pod_context(namespace, name, container=container))
        await streams.relay(downstream, upstream)
    finally:
        if downstream is not None:
            sockets.discard(downstream)
        await upstream.close()
    return downstream


async def exec_container(request: web.Request) -> web.StreamResponse:
    return await _relay(request, "exec")


async def attach_container(request: web.Request) -> web.StreamResponse:
    return await _relay(request, "attach")
