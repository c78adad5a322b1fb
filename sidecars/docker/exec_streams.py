"""exec and attach: a `kod.streams` channel socket joined to a hijacked Docker stream.

    exec_id = await prepare_exec(engine, container_id, options)      # refusals surface here
    await run(engine, channels, hijacked, Target(exec_id=...), tty=options.tty)

Channels in (`kod.streams`): STDIN to the process, CLOSE [STDIN] closes its stdin (the hijacked
connection's write side: Docker then gives the process EOF), RESIZE sets the terminal size.
Channels out: STDOUT and STDERR (Docker's multiplexed frames, or the raw terminal with a tty),
then STATUS once the output ended (exec: the exit code, read from the exec's inspect). A caller
that goes away closes the hijacked connection; the process is left to the container, as a
kubelet leaves it.

The first size of a terminal: `kubectl exec -it` sends it at once, and a shell asks for it at
once too (`stty size`), so the exec waits for it (`first_messages`, at most a second) and starts
with it (Docker's ConsoleSize, API 1.42+); an older engine can only resize the running process,
which is tried at once and then every few milliseconds until the engine accepts it (a process
that reads its size in its first milliseconds may still see 0 0 there, as with `docker exec -it`
on those engines).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from kod import errors, streams, wire
from kod.log import get_logger
from sidecars.docker.engine import Engine, EngineError, Hijacked, demux_frames

log = get_logger(__name__)

#: How long the output may have ended before the engine reports the exec's exit code.
EXIT_CODE_WAIT_SECONDS = 5.0
#: Retries of a resize the engine refused because the process was not running yet.
RESIZE_RETRIES, RESIZE_RETRY_SECONDS = 200, 0.005
#: How long a terminal's exec waits for the caller's first size before it starts.
FIRST_SIZE_SECONDS = 1.0


@dataclass(frozen=True)
class Target:
    """What the stream is attached to: an exec instance, or a container's main process."""

    exec_id: str | None = None
    container_id: str | None = None


async def prepare_exec(engine: Engine, container_id: str, options: wire.ExecOptions) -> str:
    """Create the exec instance (not started): its id. Refusals as the vocabulary's errors:
    NotFound (the container is gone), InvalidInput (not running, or a bad command)."""
    try:
        return await engine.create_exec(
            container_id, options.command, stdin=options.stdin, stdout=options.stdout,
            stderr=options.stderr and not options.tty, tty=options.tty,
        )
    except EngineError as exc:
        if exc.not_found:
            raise errors.NotFound(f"the container is gone: {exc.message}") from exc
        if exc.conflict:
            raise errors.InvalidInput(f"the container is not running: {exc.message}") from exc
        raise exc.as_kod_error("creating the exec") from exc


async def first_messages(channels: streams.Channels, *, timeout: float = FIRST_SIZE_SECONDS) -> tuple[tuple[int, int] | None, list[tuple[int, bytes] | None]]:
    """For a terminal: the caller's first size, waited for up to `timeout`, and whatever came
    before it (to be handled as usual)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    early: list[tuple[int, bytes] | None] = []
    while (left := deadline - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(channels.receive(), left)
        except TimeoutError:
            break
        if message is not None and message[0] == streams.RESIZE:
            size = streams.parse_resize(message[1])
            if size is not None:
                return size, early
        early.append(message)
        if message is None:
            break
    return None, early


async def open_stream(
    engine: Engine, target: Target, options: wire.ExecOptions, *, size: tuple[int, int] | None = None
) -> Hijacked:
    """Start the exec (with the terminal's first `size`), or attach to the container: the
    hijacked connection."""
    try:
        if target.exec_id is not None:
            return await engine.start_exec(target.exec_id, tty=options.tty, console_size=size)
        assert target.container_id is not None
        return await engine.attach(
            target.container_id, stdin=options.stdin, stdout=options.stdout, stderr=options.stderr and not options.tty
        )
    except EngineError as exc:
        if exc.not_found:
            raise errors.NotFound(f"the container is gone: {exc.message}") from exc
        if exc.conflict:
            raise errors.InvalidInput(f"the container is not running: {exc.message}") from exc
        raise exc.as_kod_error("opening the stream") from exc


async def _resize(engine: Engine, target: Target, width: int, height: int) -> None:
    """Resize, retried while the engine says the process does not run yet."""
    for attempt in range(RESIZE_RETRIES):
        try:
            if target.exec_id is None:
                assert target.container_id is not None
                await engine.resize_container(target.container_id, width=width, height=height)
                return
            if await engine.resize_exec(target.exec_id, width=width, height=height):
                return
            if attempt % 20 == 19:
                info = await engine.inspect_exec(target.exec_id)
                if not info.get("Running") and info.get("ExitCode") is not None:
                    return  # over already
        except (EngineError, errors.Unavailable) as exc:
            log.debug("resize refused, retrying", error=str(exc))
        await asyncio.sleep(RESIZE_RETRY_SECONDS)


async def _input(
    engine: Engine, channels: streams.Channels, hijacked: Hijacked, target: Target, early: list[tuple[int, bytes] | None]
) -> None:
    """Caller -> process, until the caller goes away (then the connection is dropped)."""
    resizes: set[asyncio.Task[None]] = set()
    try:
        while True:
            message = early.pop(0) if early else await channels.receive()
            if message is None:
                hijacked.close()
                return
            channel, payload = message
            if channel == streams.STDIN:
                try:
                    await hijacked.write(payload)
                except (ConnectionError, RuntimeError):
                    pass  # the process's stdin closed: drop what the caller still sends
            elif channel == streams.CLOSE and payload[:1] == bytes((streams.STDIN,)):
                hijacked.close_write()
            elif channel == streams.RESIZE:
                size = streams.parse_resize(payload)
                if size is not None:
                    task = asyncio.create_task(_resize(engine, target, *size), name="exec-resize")
                    resizes.add(task)
                    task.add_done_callback(resizes.discard)
    finally:
        for task in list(resizes):
            task.cancel()


async def _output(channels: streams.Channels, hijacked: Hijacked, *, tty: bool) -> None:
    """Process -> caller until the process's output ends."""
    if tty:
        while chunk := await _read(hijacked):
            await channels.send(streams.STDOUT, chunk)
        return
    async for kind, payload in demux_frames(hijacked.reader):
        if kind == 2:
            await channels.send(streams.STDERR, payload)
        elif kind in (0, 1):  # 0 is stdin echoed back by old engines: show it as output
            await channels.send(streams.STDOUT, payload)


async def _read(hijacked: Hijacked) -> bytes:
    try:
        return await hijacked.reader.read(64 * 1024)
    except (ConnectionError, asyncio.IncompleteReadError):
        return b""


async def _exit_code(engine: Engine, exec_id: str) -> wire.StreamStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EXIT_CODE_WAIT_SECONDS
    while True:
        try:
            info = await engine.inspect_exec(exec_id)
        except (EngineError, errors.Unavailable) as exc:
            return wire.StreamStatus(message=f"cannot read the exit code: {exc}")
        if not info.get("Running") and info.get("ExitCode") is not None:
            return wire.StreamStatus(exitCode=int(info["ExitCode"]))
        if loop.time() > deadline:
            return wire.StreamStatus(message="the process's output ended but the engine reports no exit code")
        await asyncio.sleep(0.02)


async def run(
    engine: Engine, channels: streams.Channels, hijacked: Hijacked, target: Target, *, tty: bool,
    size: tuple[int, int] | None = None, early: list[tuple[int, bytes] | None] | None = None,
) -> None:
    """Carry the stream both ways until the process's output ends (then STATUS) or the caller
    goes away; the hijacked connection is closed at the end either way. `size` is the
    terminal's first size (set again now, for engines that could not start with it); `early`
    the messages that came before it."""
    pending = list(early or [])
    if size is not None:
        pending.insert(0, (streams.RESIZE, streams.resize_message(*size)))
    feeding = asyncio.create_task(_input(engine, channels, hijacked, target, pending), name="exec-input")
    draining = asyncio.create_task(_output(channels, hijacked, tty=tty), name="exec-output")
    try:
        done, _ = await asyncio.wait({feeding, draining}, return_when=asyncio.FIRST_COMPLETED)
        if draining in done and feeding not in done:  # (the input ends only when the caller went away)
            draining.result()
            status = await _exit_code(engine, target.exec_id) if target.exec_id else wire.StreamStatus()
            await channels.send_status(status)
    finally:
        for task in (feeding, draining):
            task.cancel()
        await asyncio.gather(feeding, draining, return_exceptions=True)
        hijacked.close()
        with contextlib.suppress(Exception):
            await channels.close()
