"""GET /v1/pods/{namespace}/{name}/portforward?port=N -> 101 WebSocket (`kod.streams`
channels): one TCP connection to localhost:N inside the pod's network namespace, DATA both
ways, CLOSE [DATA] for each side's EOF.

400 bad port, nothing listens there, or the pod's sandbox does not run; 503 the pod's network
namespace cannot be entered or is not its own any more (never dialled then); 404 no such pod.
Refusals come before the upgrade, their message in the `X-Kod-Error` header too."""

from __future__ import annotations

from aiohttp import web

from kod import errors, streams
from sidecars.docker import portforward
from sidecars.docker.handlers.keys import RUNTIME, SOCKETS


async def handle(request: web.Request) -> web.StreamResponse:
    ns, name = request.match_info["namespace"], request.match_info["name"]
    runtime = request.app[RUNTIME]
    try:
        options = streams.parse_port_query(request.query)
        sandbox = await runtime.sandbox(ns, name)
        sock = await portforward.dial(sandbox, options.port)
    except errors.KodError as exc:
        return streams.refusal(exc)
    try:
        ws = await streams.accept(request)
    except BaseException:
        sock.close()
        raise
    request.app[SOCKETS].add(ws)
    try:
        await portforward.carry(streams.Channels(ws), sock)
    finally:
        request.app[SOCKETS].discard(ws)
    return ws
