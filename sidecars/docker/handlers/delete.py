"""DELETE /v1/pods/{namespace}/{name}?<DeleteOptions> -> 200 PodStatus (final: every container
stopped; phase Succeeded when all exited 0, else Failed), after the pod's containers, infra
container and private volumes were removed (PVC volumes stay). It is also published as DELETED
on /v1/watch.

The containers get their stop signal, then SIGKILL after the grace period (gracePeriodSeconds,
else the pod's terminationGracePeriodSeconds, else 30 s; 0 kills at once). The answer comes when
all is removed, so give the request a timeout longer than the grace period. Delete may be called
more than once: a call during a delete waits for the same result (and shortens the grace period
when it asks for less).

400 bad query; 404 no such pod (or not with that uid): it is gone, which is what was asked."""

from __future__ import annotations

from aiohttp import web

from kod import wire
from kod.http import json_model, parse_query
from sidecars.docker.handlers.keys import RUNTIME


async def handle(request: web.Request) -> web.Response:
    opts = parse_query(request, wire.DeleteOptions)
    ns, name = request.match_info["namespace"], request.match_info["name"]
    final = await request.app[RUNTIME].delete(ns, name, uid=opts.uid, grace=opts.gracePeriodSeconds)
    return json_model(final)
