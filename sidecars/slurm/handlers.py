"""HTTP handlers of the Slurm sidecar: the InterLink plugin API of `kod.wire`, routed by the
table of `kod.routes` (the one the OpenAPI document is generated from), as the Docker sidecar
serves it. Each handler says what it takes and answers.
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from kod import errors, streams, wire
from kod.http import json_model, parse_query, read_model
from kod.hub import Hub
from kod.routes import SIDECAR
from kod.routes import add_routes as add_table_routes
from kod.watch_serve import serve_watch
from sidecars.slurm.runtime import Runtime
from sidecars.slurm.settings import SlurmSidecarSettings

SETTINGS = web.AppKey("settings", SlurmSidecarSettings)
RUNTIME = web.AppKey("runtime", Runtime)
HUB = web.AppKey("hub", Hub)


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz (no auth) -> 200 "ok" once synced with Slurm, else 503 with the reason."""
    runtime = request.app[RUNTIME]
    if runtime.ready.is_set() and runtime.slurm_error is None:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=f"Slurm not synced: {runtime.slurm_error}\n")


async def ping(request: web.Request) -> web.Response:
    """GET /v1/ping -> 200 NodeInfo: capacity from sinfo (CPUs, memory, GPUs of the partition's
    nodes), pods from the settings, labels, taints, health (ok false while Slurm does not answer)."""
    runtime = request.app[RUNTIME]
    with contextlib.suppress(errors.Unavailable):
        await runtime.wait_ready()
    return json_model(await runtime.node_info())


async def create_pod(request: web.Request) -> web.Response:
    """POST /v1/pods PodCreateRequest -> 201 PodStatus once the job is submitted (200 when the uid
    exists). 400 what a job cannot run (unknown image, sbatch refusal); 403 what the HPC node does
    not offer (host paths, privileged); 409 same name, other uid; 503 Slurm unreachable."""
    body = await read_model(request, wire.PodCreateRequest)
    status, created = await request.app[RUNTIME].create(body)
    return json_model(status, status=201 if created else 200)


async def list_pods(request: web.Request) -> web.Response:
    """GET /v1/pods -> 200 PodStatusList. 503 until the first sync with Slurm."""
    runtime = request.app[RUNTIME]
    await runtime.wait_ready()
    return json_model(wire.PodStatusList(items=runtime.list()))


async def get_pod(request: web.Request) -> web.Response:
    """GET /v1/pods/{namespace}/{name} -> 200 PodStatus; 404."""
    ns, name = request.match_info["namespace"], request.match_info["name"]
    return json_model(await request.app[RUNTIME].get(ns, name))


async def delete_pod(request: web.Request) -> web.Response:
    """DELETE /v1/pods/{namespace}/{name}?<DeleteOptions> -> 200 final PodStatus once squeue shows
    the job ended (SIGTERM, SIGKILL after the grace period); 404 no such pod."""
    opts = parse_query(request, wire.DeleteOptions)
    ns, name = request.match_info["namespace"], request.match_info["name"]
    return json_model(await request.app[RUNTIME].delete(ns, name, uid=opts.uid, grace=opts.gracePeriodSeconds))


async def pod_logs(request: web.Request) -> web.StreamResponse:
    """GET .../containers/{container}/logs?<LogOptions> -> 200 text/plain from the run's output
    file (follow until the run ends; previous: the run before). 400 nothing yet; 404."""
    opts = parse_query(request, wire.LogOptions)
    ns, name, container = (request.match_info[k] for k in ("namespace", "name", "container"))
    stream = await request.app[RUNTIME].logs(ns, name, container, opts)
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        await response.prepare(request)
        try:
            async for chunk in stream:
                if chunk:
                    await response.write(chunk)
        except ConnectionResetError:
            return response
    await response.write_eof()
    return response


async def watch(request: web.Request) -> web.StreamResponse:
    """GET /v1/watch -> NDJSON WatchEvents: SYNC, then STATUS/DELETED as the poller sees them."""
    runtime = request.app[RUNTIME]
    await runtime.wait_ready()
    return await serve_watch(request, request.app[HUB], snapshot=runtime.list,
                             heartbeat_seconds=request.app[SETTINGS].heartbeat_seconds)


async def not_offered(request: web.Request) -> web.Response:
    """exec, attach and port-forward -> 400: a batch job has no interactive streams here."""
    return streams.refusal(errors.InvalidInput("exec, attach and port-forward are not offered by the Slurm sidecar "
                                               "(pods run as batch jobs)"))


async def volumes_not_updated(request: web.Request) -> web.Response:
    """PUT .../volumes -> 400: a job's volumes are staged once, before sbatch (kod.routes: a sidecar
    that cannot update volumes answers 400)."""
    raise errors.InvalidInput("the Slurm sidecar does not update a running pod's volumes (they are staged once, "
                              "before the job is submitted)")


HANDLERS = {
    "healthz": healthz,
    "ping": ping,
    "createPod": create_pod,
    "listPods": list_pods,
    "getPod": get_pod,
    "deletePod": delete_pod,
    "updateVolumes": volumes_not_updated,
    "podLogs": pod_logs,
    "watch": watch,
    "execContainer": not_offered,
    "attachContainer": not_offered,
    "portForward": not_offered,
}


def add_routes(app: web.Application) -> None:
    add_table_routes(app, SIDECAR, HANDLERS)
