"""The kubelet's side of `kubectl port-forward` over SPDY (protocol portforward.k8s.io): each
forwarded TCP connection is a pair of client streams, carried to one `kod.streams` socket.

    session = await kod.spdy.accept_upgrade(request, {PROTOCOL_HEADER: PROTOCOL})
    async with session:
        await serve(session, dial, pod="ns/name")     # dial(port) -> kod.streams.Channels

Wire facts (client-go tools/portforward, the kubelet's cri/streaming/portforward):
- The client opens, per connection, an error stream and then a data stream, both with headers
  `streamType` (error, data), `port` and `requestID` (the pair's key, a counter).
- The data stream carries the connection both ways; the client's FIN is the local side's EOF.
- The error stream carries, when forwarding fails, one message ("error forwarding port 80 to
  pod ...: ..."); its FIN (with or without a message) tells the client the pair is done, after
  the data stream's FIN.
- The connection is dialled inside the pod's network namespace (the kubelet's runtime enters it
  and dials localhost): a port bound to the pod's 127.0.0.1 is reachable.
- A pair whose second stream does not come within the stream creation timeout is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kod import errors, spdy, streams
from kod.log import get_logger

log = get_logger(__name__)

PROTOCOL = "portforward.k8s.io"
PROTOCOL_HEADER = "X-Stream-Protocol-Version"
STREAM_TYPE, PORT, REQUEST_ID = "streamtype", "port", "requestid"
DATA, ERROR = "data", "error"
#: How long the second stream of a pair may take (the kubelet's stream creation timeout).
PAIR_TIMEOUT = 30.0

Dial = Callable[[int], Awaitable[streams.Channels]]


@dataclass
class Pair:
    request_id: str
    data: spdy.Stream | None = None
    error: spdy.Stream | None = None

    @property
    def complete(self) -> bool:
        return self.data is not None and self.error is not None


def parse_port(value: str) -> int:
    """A port header's value; InvalidInput unless 1..65535."""
    try:
        port = int(value)
    except ValueError as exc:
        raise errors.InvalidInput(f"invalid port {value!r}") from exc
    if not 1 <= port <= 65535:
        raise errors.InvalidInput(f"port {port} must be within 1..65535")
    return port


async def serve(session: spdy.Session, dial: Dial, *, pod: str, pair_timeout: float = PAIR_TIMEOUT) -> None:
    """Forward every pair the client opens until the session ends."""
    pairs: dict[str, Pair] = {}
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def expire(pair: Pair) -> None:
        await asyncio.sleep(pair_timeout)
        if pairs.get(pair.request_id) is pair:
            del pairs[pair.request_id]
            log.info("port-forward: a stream pair stayed incomplete", request_id=pair.request_id)
            for stream in (pair.error, pair.data):
                if stream is not None:
                    await stream.reset()

    try:
        while True:
            stream = await session.accept()
            if stream is None:
                return
            kind, request_id = stream.header(STREAM_TYPE), stream.header(REQUEST_ID)
            if kind not in (DATA, ERROR) or not request_id:
                log.info("port-forward: unexpected stream", stream_type=kind, request_id=request_id)
                await stream.reset(spdy.PROTOCOL_ERROR)
                continue
            pair = pairs.get(request_id)
            if pair is None:
                pair = pairs[request_id] = Pair(request_id)
                spawn(expire(pair), f"portforward-expire-{request_id}")
            if getattr(pair, kind) is not None:
                await stream.reset(spdy.PROTOCOL_ERROR)
                continue
            setattr(pair, kind, stream)
            if pair.complete:
                del pairs[request_id]
                spawn(forward(pair, dial, pod=pod), f"portforward-{request_id}")
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def forward(pair: Pair, dial: Dial, *, pod: str) -> None:
    """Carry one pair: dial its port, pump both ways, report a failure on its error stream."""
    assert pair.data is not None and pair.error is not None
    data, error = pair.data, pair.error
    port_text = data.header(PORT)
    failure = ""
    try:
        port = parse_port(port_text)
        channels = await dial(port)
    except errors.KodError as exc:
        await _fail(pair, f"error forwarding port {port_text} to pod {pod}: {exc}")
        return
    try:
        failure = await _pump(data, channels)
    finally:
        await channels.close()
    if failure:
        failure = f"error forwarding port {port} to pod {pod}: {failure}"
    await data.close()
    if failure:
        await error.write(failure.encode())
    await error.close()


async def _fail(pair: Pair, message: str) -> None:
    assert pair.data is not None and pair.error is not None
    log.info("port-forward failed", message=message)
    await pair.error.write(message.encode())
    await pair.error.close()
    await pair.data.close()


async def _pump(data: spdy.Stream, channels: streams.Channels) -> str:
    """Both directions until the pod's side ends; the error text the backend sent, if any."""

    async def upstream() -> None:
        while chunk := await data.read():
            await channels.send(streams.DATA, chunk)
        if not data.was_reset:
            await channels.end(streams.DATA)

    sending = asyncio.create_task(upstream(), name="portforward-upstream")
    failure = []
    try:
        while True:
            message = await channels.receive()
            if message is None:
                break
            channel, payload = message
            if channel == streams.DATA:
                await data.write(payload)
            elif channel == streams.ERROR:
                failure.append(payload.decode("utf-8", "replace"))
            elif channel == streams.CLOSE and payload[:1] == bytes((streams.DATA,)):
                # The pod's side ended: the pair ends now. (containerd waits up to 1 s for the
                # client's side first, but the client only ends its side once it saw ours end.)
                break
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    return "; ".join(failure)
