"""The kubelet's side of `kubectl exec` and `kubectl attach` over SPDY: the remotecommand
protocols channel.k8s.io (v1) to v4.channel.k8s.io, carried to a `kod.streams` channel socket.

    options = options_from_query(request.query, exec_=True)          # ?command=..&input=1&tty=1
    protocol = negotiate(request.headers.getall(PROTOCOL_HEADER, []))  # before the upgrade
    session = await kod.spdy.accept_upgrade(request, {PROTOCOL_HEADER: protocol})
    async with session:
        streams = await wait_for_streams(session, protocol, options)
        await bridge(streams, channels)        # until the process ends; then status and FINs

Wire facts (k8s.io/apimachinery httpstream, the kubelet's cri/streaming/remotecommand):
- The client offers protocols in `X-Stream-Protocol-Version` headers, best first; the server
  takes the first one it supports and names it in its 101 answer. None in common: 403 with
  `X-Accepted-Stream-Protocol-Versions`. No header at all: v1. v5.channel.k8s.io is
  WebSocket-only (its CLOSE signal); the API server speaks v4 to kubelets over SPDY.
- The client opens one SPDY stream per channel, named by the `streamType` header: error,
  stdin, stdout, stderr, and (v3+, with a tty) resize. The kubelet waits (30 s) for as many
  streams as the query asks for (error included) before it runs anything.
- resize carries a sequence of JSON objects {"Width": w, "Height": h}.
- The end: stdout and stderr end (FIN), then the error stream says how it went, then the
  connection closes. v4: a JSON metav1.Status ({"metadata":{},"status":"Success"}; a non-zero exit
  is reason NonZeroExitCode with a cause of type (JSON "reason") ExitCode whose message is the
  code, which kubectl turns into its own exit code). v1-v3: nothing on success, the message text
  on failure.
- With a tty there is no stderr (the kubelet drops it: the terminal merges both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kod import errors, spdy, streams, wire
from kod.log import get_logger

log = get_logger(__name__)

V1, V2, V3, V4 = "channel.k8s.io", "v2.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io"
#: WebSocket only; named here to say so (it is never negotiated over SPDY).
V5 = "v5.channel.k8s.io"
#: What this node negotiates over SPDY, best first (the kubelet's list).
SUPPORTED = (V4, V3, V2, V1)
PROTOCOL_HEADER = "X-Stream-Protocol-Version"
ACCEPTED_HEADER = "X-Accepted-Stream-Protocol-Versions"
#: How long the client may take to open its streams (the kubelet's default).
STREAM_CREATION_TIMEOUT = 30.0

STREAM_TYPE = "streamtype"
ERROR, STDIN, STDOUT, STDERR, RESIZE = "error", "stdin", "stdout", "stderr", "resize"

NON_ZERO_EXIT_CODE = "NonZeroExitCode"
EXIT_CODE_CAUSE = "ExitCode"


class NegotiationFailed(errors.Forbidden):
    """No protocol in common (403, with the accepted ones in a header)."""

    def __init__(self, offered: Sequence[str], supported: Sequence[str]) -> None:
        super().__init__(
            f"unable to upgrade: unable to negotiate protocol: client supports {list(offered)}, "
            f"server accepts {list(supported)}"
        )
        self.supported = tuple(supported)


def _flag(query: Mapping[str, str], key: str) -> bool:
    return query.get(key, "").lower() in ("1", "true")


def options_from_query(query: Mapping[str, str], *, exec_: bool) -> wire.ExecOptions:
    """The kubelet's query string (command repeated; input, output, error, tty = "1") as
    options. Raises InvalidInput without any stream, or for exec without a command."""
    command = list(query.getall("command", [])) if exec_ else []  # type: ignore[attr-defined]
    tty = _flag(query, "tty")
    stdin, stdout, stderr = _flag(query, "input"), _flag(query, "output"), _flag(query, "error")
    if tty:
        stderr = False  # as the kubelet: a terminal merges stderr into stdout
    if not (stdin or stdout or stderr):
        raise errors.InvalidInput("you must specify at least 1 of stdin, stdout, stderr")
    if exec_ and not command:
        raise errors.InvalidInput("you must specify a command to execute")
    try:
        return wire.ExecOptions(command=command, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
    except ValidationError as exc:  # pragma: no cover - the fields are plain
        raise errors.InvalidInput(str(exc)) from exc


def negotiate(offered: Sequence[str], supported: Sequence[str] = SUPPORTED) -> str:
    """The protocol to speak: the client's first that the server supports; "" (v1) when the
    client offered none. Raises NegotiationFailed."""
    wanted = [p.strip() for value in offered for p in value.split(",") if p.strip()]
    if not wanted:
        return ""
    for protocol in wanted:
        if protocol in supported:
            return protocol
    raise NegotiationFailed(wanted, supported)


# ------------------------------------------------------------------------------ status


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_code_status(code: int) -> dict[str, Any]:
    """The kubelet's status for a process that exited non-zero: kubectl exits with `code`."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": NON_ZERO_EXIT_CODE,
        "details": {"causes": [{"reason": EXIT_CODE_CAUSE, "message": str(code)}]},
    }


def internal_error_status(message: str) -> dict[str, Any]:
    """apierrors.NewInternalError, as the kubelet reports an exec that could not run."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def status_for(result: wire.StreamStatus | None) -> dict[str, Any]:
    """The Status to report for how the backend said the stream ended (None: it broke)."""
    if result is None:
        return internal_error_status("the stream to the container broke off")
    if result.message:
        return internal_error_status(result.message)
    if result.exitCode:
        return exit_code_status(result.exitCode)
    return success_status()


def encode_status(protocol: str, status: Mapping[str, Any]) -> bytes:
    """What the error stream carries for `status` in `protocol`."""
    if protocol == V4:
        return json.dumps(status, separators=(",", ":")).encode()
    if status.get("status") == "Success":
        return b""
    return str(status.get("message", "")).encode()


# ------------------------------------------------------------------------------ streams


@dataclass
class Streams:
    """The client's streams of one exec or attach, by type."""

    protocol: str
    error: spdy.Stream | None = None
    stdin: spdy.Stream | None = None
    stdout: spdy.Stream | None = None
    stderr: spdy.Stream | None = None
    resize: spdy.Stream | None = None


def expected_streams(protocol: str, options: wire.ExecOptions) -> int:
    """How many streams the client opens: error, one per stream asked for, resize (v3+, tty)."""
    return 1 + options.stdin + options.stdout + options.stderr + (options.tty and protocol in (V3, V4))


async def wait_for_streams(
    session: spdy.Session, protocol: str, options: wire.ExecOptions, *, timeout: float = STREAM_CREATION_TIMEOUT
) -> Streams:
    """The client's streams, once all it should open are open. TimeoutError after `timeout`;
    ConnectionError when the session ends first. Streams of unknown types are reset."""
    found = Streams(protocol or V1)
    wanted = expected_streams(protocol, options)
    received = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    allowed = {ERROR, STDIN, STDOUT, STDERR} | ({RESIZE} if protocol in (V3, V4) else set())
    while received < wanted:
        stream = await session.accept(timeout=max(0.0, deadline - loop.time()))
        if stream is None:
            raise ConnectionError("the client went away before opening its streams")
        kind = stream.header(STREAM_TYPE)
        if kind not in allowed or getattr(found, kind) is not None:
            log.info("unexpected stream type", stream_type=kind)
            await stream.reset(spdy.PROTOCOL_ERROR)
            continue
        setattr(found, kind, stream)
        received += 1
    return found


async def resize_events(stream: spdy.Stream) -> AsyncIterator[tuple[int, int]]:
    """(width, height) for each JSON object on the resize stream, until it ends or turns bad."""
    decoder = json.JSONDecoder()
    buffer = ""
    while True:
        chunk = await stream.read()
        if not chunk:
            return
        buffer += chunk.decode("utf-8", "replace")
        while True:
            text = buffer.lstrip()
            if not text:
                buffer = ""
                break
            try:
                obj, end = decoder.raw_decode(text)
            except json.JSONDecodeError:
                buffer = text
                if len(buffer) > 4096:
                    return  # not JSON: stop listening, as the kubelet's decoder does
                break
            buffer = text[end:]
            try:
                yield int(obj["Width"]), int(obj["Height"])
            except (KeyError, TypeError, ValueError):
                return


async def _pump_stdin(source: spdy.Stream, channels: streams.Channels) -> None:
    while chunk := await source.read():
        await channels.send(streams.STDIN, chunk)
    await channels.end(streams.STDIN)


async def _pump_resize(source: spdy.Stream, channels: streams.Channels) -> None:
    async for width, height in resize_events(source):
        await channels.send(streams.RESIZE, streams.resize_message(width, height))


async def bridge(found: Streams, channels: streams.Channels, session: spdy.Session) -> wire.StreamStatus | None:
    """Carry the streams to the channel socket and back until the backend reports the end (or
    the client goes away); then end stdout and stderr, write the status and end the error
    stream. Returns how the backend said it ended (None: the backend broke off)."""
    inputs = []
    if found.stdin is not None:
        inputs.append(asyncio.create_task(_pump_stdin(found.stdin, channels), name="exec-stdin"))
    if found.resize is not None:
        inputs.append(asyncio.create_task(_pump_resize(found.resize, channels), name="exec-resize"))
    result: wire.StreamStatus | None = None
    gone = asyncio.create_task(session.closed.wait(), name="exec-client-gone")
    try:
        while True:
            receiving = asyncio.ensure_future(channels.receive())
            done, _ = await asyncio.wait({receiving, gone}, return_when=asyncio.FIRST_COMPLETED)
            if receiving not in done:
                receiving.cancel()
                return None  # the client went away; nobody reads a status
            message = receiving.result()
            if message is None:
                break
            channel, payload = message
            if channel == streams.STDOUT and found.stdout is not None:
                await found.stdout.write(payload)
            elif channel == streams.STDERR:
                target = found.stderr or found.stdout
                if target is not None:
                    await target.write(payload)
            elif channel == streams.STATUS:
                try:
                    result = wire.StreamStatus.model_validate_json(payload)
                except ValidationError:
                    result = wire.StreamStatus(message="the container's runtime sent a malformed status")
                break
    finally:
        gone.cancel()
        for task in inputs:
            task.cancel()
        await asyncio.gather(gone, *inputs, return_exceptions=True)
    for stream in (found.stdout, found.stderr):
        if stream is not None:
            await stream.close()
    if found.error is not None:
        payload = encode_status(found.protocol, status_for(result))
        if payload:
            await found.error.write(payload)
        await found.error.close()
    if found.stdin is not None:
        with contextlib.suppress(Exception):
            await found.stdin.close()
    if found.resize is not None:
        with contextlib.suppress(Exception):
            await found.resize.close()
    return result
