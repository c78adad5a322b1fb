"""The streams of exec, attach and port-forward between vk_bridge, interlink and the sidecars:
one WebSocket (aiohttp's) per stream, its binary messages framed like v5.channel.k8s.io: the
first byte is the channel, the rest the payload.

    exec and attach                            port-forward (one TCP connection per stream)
      0 STDIN   caller -> process                0 DATA    both ways
      1 STDOUT  process -> caller                1 ERROR   -> caller: why it failed (text)
      2 STDERR  process -> caller (no tty)     255 CLOSE   [0]: that side sends no more data
      3 STATUS  -> caller, last: StreamStatus
      4 RESIZE  caller -> process: {"Width": w, "Height": h}
    255 CLOSE   [channel]: that channel ends (caller -> [0]: stdin's EOF)

The caller (vk_bridge) opens the stream with `ApiClient.websocket`; interlink passes messages
through unchanged; the sidecar ends exec and attach with a STATUS message, then closes. A
refusal before the upgrade (no such pod, container not running) is the usual error answer with
its message in `wire.STREAM_ERROR_HEADER` too, since a WebSocket client does not read an error body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from kod import errors, wire
from kod.http import error_response, validation_message

STDIN, STDOUT, STDERR, STATUS, RESIZE = 0, 1, 2, 3, 4
DATA, ERROR = 0, 1
CLOSE = 255

#: Largest message either side sends (payloads are cut to this much).
MAX_MESSAGE = 256 * 1024
#: Each side pings this often, so that a peer that vanished without a FIN (a suspended laptop, a
#: dropped link) ends the stream instead of holding it open forever.
HEARTBEAT_SECONDS = 30.0


class WebSocketLike(Protocol):
    """What both of aiohttp's WebSocket classes (server and client side) offer."""

    async def send_bytes(self, data: bytes) -> None: ...
    async def receive(self, timeout: float | None = None) -> Any: ...
    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...

    @property
    def closed(self) -> bool: ...


def frame(channel: int, payload: bytes = b"") -> bytes:
    """One message: the channel byte, then the payload."""
    return bytes((channel,)) + payload


class Channels:
    """One channel WebSocket, on either side: send and receive (channel, payload) messages."""

    def __init__(self, ws: WebSocketLike) -> None:
        self.ws = ws

    async def send(self, channel: int, payload: bytes = b"") -> None:
        """Send on a channel (big payloads in several messages); a closed socket drops it."""
        if self.ws.closed:
            return
        try:
            if len(payload) <= MAX_MESSAGE:
                await self.ws.send_bytes(frame(channel, payload))
                return
            view = memoryview(payload)
            for start in range(0, len(view), MAX_MESSAGE):
                await self.ws.send_bytes(frame(channel, bytes(view[start : start + MAX_MESSAGE])))
        except (ConnectionError, RuntimeError):
            pass  # the peer went away: its reader sees the end

    async def end(self, channel: int) -> None:
        """Tell the peer that `channel` ends (stdin's EOF, a port's half-close)."""
        await self.send(CLOSE, bytes((channel,)))

    async def send_status(self, status: wire.StreamStatus) -> None:
        await self.send(STATUS, status.model_dump_json(exclude_none=True).encode())

    async def receive(self) -> tuple[int, bytes] | None:
        """The next (channel, payload); None once the socket closed (or broke)."""
        while True:
            msg = await self.ws.receive()
            if msg.type == WSMsgType.BINARY:
                if msg.data:
                    return msg.data[0], bytes(msg.data[1:])
                continue
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return None
            # TEXT, PING and PONG carry nothing of ours.

    async def close(self) -> None:
        try:
            await self.ws.close()
        except (ConnectionError, RuntimeError):
            pass


def parse_resize(payload: bytes) -> tuple[int, int] | None:
    """(width, height) of a RESIZE message; None when it is malformed (ignored, as the kubelet
    ignores what it cannot decode)."""
    try:
        data = json.loads(payload)
        width, height = int(data["Width"]), int(data["Height"])
    except (ValueError, KeyError, TypeError):
        return None
    if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
        return None
    return width, height


def resize_message(width: int, height: int) -> bytes:
    return json.dumps({"Width": width, "Height": height}).encode()


# ------------------------------------------------------------------------------ query strings


def exec_query(options: wire.ExecOptions) -> list[tuple[str, str]]:
    """The query string of an exec/attach stream (`command` once per argument)."""
    flags = [(k, "true" if getattr(options, k) else "false") for k in ("stdin", "stdout", "stderr", "tty")]
    return [("command", part) for part in options.command] + flags


def parse_exec_query(query: Mapping[str, str]) -> wire.ExecOptions:
    """`exec_query`'s inverse on a request's query (a MultiDict: `command` repeats); unknown
    parameters and malformed values are InvalidInput."""
    data: dict[str, Any] = {"command": list(query.getall("command", []))}  # type: ignore[attr-defined]
    for key, value in query.items():
        if key == "command":
            continue
        if key not in wire.ExecOptions.model_fields:
            raise errors.InvalidInput(f"unknown query parameter {key!r}")
        if value.lower() not in ("true", "false", "1", "0"):
            raise errors.InvalidInput(f"{key} must be true or false, not {value!r}")
        data[key] = value.lower() in ("true", "1")
    try:
        return wire.ExecOptions.model_validate(data)
    except ValidationError as exc:
        raise errors.InvalidInput(validation_message(exc)) from exc


def parse_port_query(query: Mapping[str, str]) -> wire.PortForwardOptions:
    unknown = sorted(set(query) - set(wire.PortForwardOptions.model_fields))
    if unknown:
        raise errors.InvalidInput(f"unknown query parameter {unknown[0]!r}")
    try:
        return wire.PortForwardOptions.model_validate(dict(query))
    except ValidationError as exc:
        raise errors.InvalidInput(validation_message(exc)) from exc


# ------------------------------------------------------------------------------ server side


def refusal(exc: errors.KodError) -> web.Response:
    """The error answer of a stream that is refused before the upgrade, readable by a WebSocket
    client (message and code in headers too)."""
    response = error_response(exc)
    response.headers[wire.STREAM_ERROR_HEADER] = quote(str(exc)[:1000], safe=" :,;/()[]'\"=")
    response.headers[wire.STREAM_ERROR_CODE_HEADER] = exc.code
    return response


async def accept(request: web.Request) -> web.WebSocketResponse:
    """Upgrade the request to the stream's WebSocket (no compression: the payloads are the
    caller's bytes, often compressed already, and throughput matters more)."""
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MESSAGE + 16, autoping=True, heartbeat=HEARTBEAT_SECONDS)
    await ws.prepare(request)
    return ws


def requested_channels(options: wire.ExecOptions) -> Iterable[int]:
    """The output channels a caller asked for."""
    if options.stdout:
        yield STDOUT
    if options.stderr and not options.tty:
        yield STDERR


async def relay(downstream: WebSocketLike, upstream: WebSocketLike) -> None:
    """Pass every binary message both ways unchanged (a proxy hop: interlink) until either side
    closes; then close the other. Backpressure: a message is read only once the last one was
    written on."""

    async def pump(source: WebSocketLike, sink: WebSocketLike) -> None:
        while True:
            msg = await source.receive()
            if msg.type != WSMsgType.BINARY:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return
                continue
            try:
                await sink.send_bytes(msg.data)
            except (ConnectionError, RuntimeError):
                return

    tasks = [asyncio.ensure_future(pump(downstream, upstream)), asyncio.ensure_future(pump(upstream, downstream))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ws in (upstream, downstream):
            try:
                await ws.close()
            except (ConnectionError, RuntimeError):
                pass
