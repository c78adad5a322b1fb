"""A container's log stream, as `kubectl logs` reads it through the virtual kubelet.

    stream = await open_logs(engine, pod, "main", options)   # errors surface here
    async for chunk in stream: ...

Contracts: every error comes before the first byte, so the HTTP answer can still say it:
NotFound (no such container in the pod, or its Docker container was removed), InvalidInput
(nothing to show yet: the container waits to start, or it has no previous run), Unavailable
(the engine failed). `previous` reads the run before the latest (a restart is a new container);
the stream follows while the container runs when `follow` is set, and stops at `limitBytes`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from kod import errors, wire
from sidecars.docker import logs
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.state import PodState


async def open_logs(engine: Engine, pod: PodState, container: str, opts: wire.LogOptions) -> AsyncIterator[bytes]:
    """The container's log bytes (stdout and stderr merged), opened (see the module's contract)."""
    slot = pod.slots.get(container)
    if slot is None:
        raise errors.NotFound(f'container "{container}" is not valid for pod "{pod.name}"')
    run = slot.previous if opts.previous else slot.latest
    if run is None:
        if opts.previous:
            raise errors.InvalidInput(f'previous terminated container "{container}" in pod "{pod.name}" not found')
        reason = slot.waiting[0] if slot.waiting else "ContainerCreating"
        raise errors.InvalidInput(f'container "{container}" in pod "{pod.name}" is waiting to start: {reason}')
    stream = engine.logs(run.id, logs.docker_params(opts))
    # Open the stream now so that errors surface before the caller starts answering.
    first = await _first_chunk(stream)
    return logs.limit(logs.demux(_prepend(first, stream), tty=bool(slot.spec.tty)), opts.limitBytes)


async def _first_chunk(stream: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except EngineError as exc:
        if exc.not_found:
            raise errors.NotFound("the container's logs are gone (it was removed)") from exc
        raise exc.as_kod_error("reading logs") from exc


async def _prepend(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield first
    async with contextlib.aclosing(rest):  # type: ignore[type-var]
        async for chunk in rest:
            yield chunk
