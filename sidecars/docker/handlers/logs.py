"""GET /v1/pods/{namespace}/{name}/containers/{container}/logs?<LogOptions> -> 200 text/plain,
the container's output (stdout and stderr merged), streamed until the container stops when
follow=true. previous=true gives the run before the current one.

400 bad options, or nothing to show yet (the container waits to start), or no previous run;
404 no such pod or container."""

from __future__ import annotations

import contextlib

from aiohttp import web

from kod import wire
from kod.http import parse_query
from kod.log import get_logger, pod_context
from sidecars.docker.handlers.keys import RUNTIME

log = get_logger(__name__)


async def handle(request: web.Request) -> web.StreamResponse:
    opts = parse_query(request, wire.LogOptions)
    ns, name = request.match_info["namespace"], request.match_info["name"]
    container = request.match_info["container"]
    stream = await request.app[RUNTIME].logs(ns, name, container, opts)
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    ctx = pod_context(ns, name, container=container, follow=opts.follow)
    try:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            await response.prepare(request)
            try:
                async for chunk in stream:
                    if chunk:
                        await response.write(chunk)
            except ConnectionResetError:
                return response  # the client went away
        await response.write_eof()
        return response
    finally:
        log.debug("log stream closed", **ctx)
