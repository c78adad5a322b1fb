# GET /v1/pods/{namespace}/{name}/containers/{container}/logs?<LogOptions>
#   Request: no body; query: follow, previous, timestamps, tailLines, limitBytes, sinceSeconds,
#   sinceTime (as `kubectl logs` passes them to a kubelet).
#   Response: 200 text/plain, streamed from the sidecar as it comes; with follow=true it lasts
#   until the container stops or the client goes away (which closes the sidecar's stream too).
#   If the sidecar's stream breaks (or interlink shuts down) mid-way, the client's stream is cut
#   too, never ended cleanly, so a partial log never looks complete.
#   Status codes: 400 bad query or path; 401 bad token; 404 no such pod or container; 503 the
#   sidecar cannot be reached.
"""Logs: a pass-through stream with backpressure in both directions."""

from __future__ import annotations

from aiohttp import web

from kod import errors
from kod.http import parse_query
from kod.log import get_logger, pod_context
from kod.wire import LogOptions

from interlink.handlers.common import path_name, pod_ref
from interlink.state import SIDECARS, locate

log = get_logger(__name__)


async def pod_logs(request: web.Request) -> web.StreamResponse:
    namespace, name = pod_ref(request)
    container = path_name(request, "container", label=True)
    opts = parse_query(request, LogOptions)
    sidecar = await locate(request.app, namespace, name)
    path = f"/v1/pods/{namespace}/{name}/containers/{container}/logs"
    bound = log.bind(sidecar=sidecar.name, container=container, **pod_context(namespace, name))
    sidecars = request.app[SIDECARS]
    async with sidecar.api.open(path, params=opts.model_dump(mode="json", exclude_defaults=True)) as upstream:
        response = web.StreamResponse(headers={"Content-Type": upstream.headers.get("Content-Type", "text/plain; charset=utf-8")})
        await response.prepare(request)
        sidecars.streams.add(upstream)
        try:
            # `write` waits while the client's socket is full, and aiohttp stops reading the
            # sidecar's socket while its buffer is full: a slow reader slows the source.
            async for chunk in upstream.chunks():
                await response.write(chunk)
        except ConnectionResetError:
            bound.debug("log client went away", follow=opts.follow)
            return response
        except errors.Unavailable as exc:
            if request.transport is None or request.transport.is_closing():
                bound.debug("log client went away", follow=opts.follow)
                return response
            if not sidecars.stopping:
                bound.warning("log stream from the sidecar broke", error=str(exc))
            # Cut the client's stream too instead of ending it cleanly: a log that merely stops
            # would look complete.
            request.transport.close()
            return response
        finally:
            sidecars.streams.discard(upstream)
        await response.write_eof()
    return response
