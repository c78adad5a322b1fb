"""GET /v1/pods/{namespace}/{name}/containers/{container}/exec?<ExecOptions> and .../attach
-> 101 WebSocket (`kod.streams` channels): stdin in; stdout, stderr and, last, the STATUS (the
exit code for exec) out.

400 bad options, or the container is not running; 404 no such pod or container. Refusals
come before the upgrade, their message in the `X-Kod-Error` header too. (A terminal's exec
starts after the upgrade, with the caller's first size: `exec_streams`.)"""

from __future__ import annotations

from aiohttp import web

from kod import errors, streams, wire
from kod.log import get_logger, pod_context
from sidecars.docker import exec_streams
from sidecars.docker.engine import Hijacked
from sidecars.docker.handlers.keys import RUNTIME, SOCKETS

log = get_logger(__name__)


async def _handle(request: web.Request, *, exec_: bool) -> web.StreamResponse:
    ns, name, container = (request.match_info[k] for k in ("namespace", "name", "container"))
    runtime = request.app[RUNTIME]
    hijacked: Hijacked | None = None
    try:
        options = streams.parse_exec_query(request.query)
        if exec_ and not options.command:
            raise errors.InvalidInput("exec needs a command")
        container_id, spec = await runtime.running_container(ns, name, container)
        if exec_:
            # Created now (refusals answer before the upgrade), started once the upgrade is done.
            target = exec_streams.Target(exec_id=await exec_streams.prepare_exec(runtime.engine, container_id, options))
        else:
            # attach speaks the container's own terminal setting, whatever the caller asked.
            options = options.model_copy(update={"tty": bool(spec.tty), "stdin": options.stdin and bool(spec.stdin)})
            target = exec_streams.Target(container_id=container_id)
            hijacked = await exec_streams.open_stream(runtime.engine, target, options)
    except errors.KodError as exc:
        return streams.refusal(exc)
    ws = await streams.accept(request)
    request.app[SOCKETS].add(ws)
    channels = streams.Channels(ws)
    try:
        size: tuple[int, int] | None = None
        early: list[tuple[int, bytes] | None] = []
        if hijacked is None:
            if options.tty:
                # A terminal starts with the caller's size: it comes first, at once.
                size, early = await exec_streams.first_messages(channels)
            try:
                hijacked = await exec_streams.open_stream(runtime.engine, target, options, size=size)
            except errors.KodError as exc:
                await channels.send_status(wire.StreamStatus(message=str(exc)))
                await channels.close()
                return ws
        log.debug("stream opened", stream="exec" if exec_ else "attach", **pod_context(ns, name, container=container))
        await exec_streams.run(runtime.engine, channels, hijacked, target, tty=options.tty, size=size, early=early)
    finally:
        request.app[SOCKETS].discard(ws)
        if hijacked is not None:
            hijacked.close()
    return ws


async def handle_exec(request: web.Request) -> web.StreamResponse:
    return await _handle(request, exec_=True)


async def handle_attach(request: web.Request) -> web.StreamResponse:
    return await _handle(request, exec_=False)
