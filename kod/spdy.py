"""SPDY/3.1, the server side: what a kubelet speaks with the API server for exec, attach and
port-forward (the API server dials the kubelet, asks `Upgrade: SPDY/3.1`, and opens streams).

    session = await accept_upgrade(request, {"X-Stream-Protocol-Version": "v4.channel.k8s.io"})
    async with session:                      # runs the frame loop; GOAWAY and close at the end
        stream = await session.accept()      # the peer's next stream (SYN_REPLY already sent)
        stream.headers["streamtype"]         # ["stdout"]
        await stream.write(b"hi\\n")          # DATA frames
        await stream.read()                  # b"" once the peer sent FIN (or reset the stream)
        await stream.close()                 # our FIN: half-close

Framing (draft-mbelshe-httpbis-spdy-00, "SPDY Protocol - Draft 3", and 3.1's session window):
every frame has an 8-byte header. A control frame: the control bit, version 3 (15 bits), type
(16 bits), flags (8), length (24). A data frame: control bit 0, stream id (31 bits), flags (8),
length (24). Control frames: SYN_STREAM (1), SYN_REPLY (2), RST_STREAM (3), SETTINGS (4),
PING (6), GOAWAY (7), HEADERS (8), WINDOW_UPDATE (9). Header blocks (of SYN_STREAM, SYN_REPLY,
HEADERS) are a 32-bit count of pairs, each a 32-bit length and a lowercase name, a 32-bit
length and the value (several values NUL-separated), compressed with zlib and the SPDY/3
dictionary; each direction is one zlib stream for the whole session, flushed per frame.

Flow control: the only peer is moby/spdystream (client-go's SPDY), which never sends nor
honours WINDOW_UPDATE; backpressure comes from TCP (its frame workers block on unread data, as
this session's reader does: a stream's queue that nobody reads stops the reader). WINDOW_UPDATE
and SETTINGS are parsed and otherwise ignored, as spdystream does.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from kod.log import get_logger

log = get_logger(__name__)

VERSION = 3
#: The Upgrade token client-go asks for.
UPGRADE = "SPDY/3.1"

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

# RST_STREAM status codes.
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, UNSUPPORTED_VERSION, CANCEL, INTERNAL_ERROR = 1, 2, 3, 4, 5, 6
FLOW_CONTROL_ERROR, STREAM_IN_USE, STREAM_ALREADY_CLOSED = 7, 8, 9
# GOAWAY status codes.
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, GOAWAY_INTERNAL_ERROR = 0, 1, 2

#: Largest payload of one frame (24-bit length).
MAX_FRAME_LENGTH = (1 << 24) - 1
#: Largest header block once decompressed (Go's http.DefaultMaxHeaderBytes): the peer's zlib
#: stream could otherwise inflate a 16 MiB frame into gigabytes.
MAX_HEADER_BLOCK = 1 << 20
#: DATA frames we send carry at most this much (many frames keep streams interleaved).
DATA_CHUNK = 64 * 1024
#: Unread DATA frames buffered per stream before the reader waits (backpressure, see above).
STREAM_QUEUE_FRAMES = 64

_HEADER = struct.Struct(">LBBH")  # first word, flags, length (24 bits as byte + short)
_U32 = struct.Struct(">L")


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): the common header
    names and values, each length-prefixed, then a text tail of status codes, dates and types."""
    words = (
        "options head post put delete trace accept accept-charset accept-encoding accept-language "
        "accept-ranges age allow authorization cache-control connection content-base content-encoding "
        "content-language content-length content-location content-md5 content-range content-type date "
        "etag expect expires from host if-match if-modified-since if-none-match if-range "
        "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
        "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
        "user-agent vary via warning www-authenticate method get status"
    ).split() + ["200 OK"] + "version HTTP/1.1 url public set-cookie keep-alive origin".split()
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,"
        "deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return b"".join(_U32.pack(len(w)) + w.encode() for w in words) + tail.encode()


DICTIONARY = _dictionary()

Headers = dict[str, list[str]]


class ProtocolError(Exception):
    """The peer broke the framing: the session ends (GOAWAY with PROTOCOL_ERROR)."""


# ------------------------------------------------------------------------------ frames


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    flags: int = 0


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers
    associated_id: int = 0
    priority: int = 0
    slot: int = 0
    flags: int = 0


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int
    flags: int = 0


@dataclass(frozen=True)
class Settings:
    #: (flags, id, value) triples.
    entries: tuple[tuple[int, int, int], ...] = ()
    flags: int = 0


@dataclass(frozen=True)
class Ping:
    ping_id: int
    flags: int = 0


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK
    flags: int = 0


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int
    flags: int = 0


Frame = DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate


class HeaderCompressor:
    """One direction's header compression: a zlib stream with the dictionary, flushed per block."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def compress(self, headers: Mapping[str, list[str] | str]) -> bytes:
        raw = bytearray(_U32.pack(len(headers)))
        for name, values in headers.items():
            value = values if isinstance(values, str) else "\0".join(values)
            n, v = name.lower().encode(), value.encode()
            raw += _U32.pack(len(n)) + n + _U32.pack(len(v)) + v
        return self._z.compress(bytes(raw)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The peer's header compression stream, decoded block by block."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(zlib.MAX_WBITS, zdict=DICTIONARY)

    def decompress(self, block: bytes) -> Headers:
        try:
            raw = self._z.decompress(block, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise ProtocolError(f"header block does not decompress: {exc}") from exc
        if len(raw) > MAX_HEADER_BLOCK or self._z.unconsumed_tail:
            raise ProtocolError(f"header block larger than {MAX_HEADER_BLOCK} bytes once decompressed")
        return parse_header_block(raw)


def parse_header_block(raw: bytes) -> Headers:
    """An uncompressed header block as name -> values."""
    try:
        (count,) = _U32.unpack_from(raw, 0)
        offset, headers = 4, {}
        for _ in range(count):
            (n,) = _U32.unpack_from(raw, offset)
            name = raw[offset + 4 : offset + 4 + n]
            offset += 4 + n
            (v,) = _U32.unpack_from(raw, offset)
            value = raw[offset + 4 : offset + 4 + v]
            offset += 4 + v
            if len(name) != n or len(value) != v or not name:
                raise ProtocolError("truncated header block")
            key = name.decode("latin-1")
            if key != key.lower():
                raise ProtocolError(f"header name {key!r} is not lowercase")
            if key in headers:
                raise ProtocolError(f"header {key!r} appears twice")
            headers[key] = value.decode("utf-8", "replace").split("\0")
    except struct.error as exc:
        raise ProtocolError("truncated header block") from exc
    return headers


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise ValueError("frame too long")
    return _HEADER.pack(0x80000000 | (VERSION << 16) | kind, flags, len(payload) >> 16, len(payload) & 0xFFFF) + payload


def encode(frame: Frame, compressor: HeaderCompressor | None = None) -> bytes:
    """The bytes of one frame; frames with headers need the session's compressor."""
    if isinstance(frame, DataFrame):
        n = len(frame.data)
        if n > MAX_FRAME_LENGTH:
            raise ValueError("frame too long")
        return _HEADER.pack(frame.stream_id & 0x7FFFFFFF, frame.flags, n >> 16, n & 0xFFFF) + frame.data
    if isinstance(frame, (SynStream, SynReply, HeadersFrame)) and compressor is None:
        raise ValueError("a frame with headers needs the session's compressor")
    if isinstance(frame, SynStream):
        assert compressor is not None
        payload = struct.pack(">LLBB", frame.stream_id & 0x7FFFFFFF, frame.associated_id & 0x7FFFFFFF,
                              (frame.priority & 0x7) << 5, frame.slot) + compressor.compress(frame.headers)
        return _control(SYN_STREAM, frame.flags, payload)
    if isinstance(frame, SynReply):
        assert compressor is not None
        return _control(SYN_REPLY, frame.flags, _U32.pack(frame.stream_id & 0x7FFFFFFF) + compressor.compress(frame.headers))
    if isinstance(frame, HeadersFrame):
        assert compressor is not None
        return _control(HEADERS, frame.flags, _U32.pack(frame.stream_id & 0x7FFFFFFF) + compressor.compress(frame.headers))
    if isinstance(frame, RstStream):
        return _control(RST_STREAM, frame.flags, struct.pack(">LL", frame.stream_id & 0x7FFFFFFF, frame.status))
    if isinstance(frame, Settings):
        body = _U32.pack(len(frame.entries)) + b"".join(
            struct.pack(">LL", (flags << 24) | (ident & 0xFFFFFF), value) for flags, ident, value in frame.entries
        )
        return _control(SETTINGS, frame.flags, body)
    if isinstance(frame, Ping):
        return _control(PING, frame.flags, _U32.pack(frame.ping_id))
    if isinstance(frame, GoAway):
        return _control(GOAWAY, frame.flags, struct.pack(">LL", frame.last_good_stream_id & 0x7FFFFFFF, frame.status))
    if isinstance(frame, WindowUpdate):
        return _control(WINDOW_UPDATE, frame.flags, struct.pack(">LL", frame.stream_id & 0x7FFFFFFF, frame.delta & 0x7FFFFFFF))
    raise TypeError(f"not a frame: {frame!r}")


def decode(header: bytes, payload: bytes, decompressor: HeaderDecompressor) -> Frame | None:
    """One frame from its 8-byte header and its payload; None for a control frame of an unknown
    type (ignored, as the draft says). ProtocolError for a malformed one."""
    word, flags, hi, lo = _HEADER.unpack(header)
    if not word & 0x80000000:
        return DataFrame(word & 0x7FFFFFFF, payload, flags)
    version, kind = (word >> 16) & 0x7FFF, word & 0xFFFF
    if version != VERSION:
        raise ProtocolError(f"SPDY version {version}; this session speaks {VERSION}")
    try:
        if kind == SYN_STREAM:
            sid, assoc, prio, slot = struct.unpack_from(">LLBB", payload)
            return SynStream(sid & 0x7FFFFFFF, decompressor.decompress(payload[10:]), assoc & 0x7FFFFFFF, prio >> 5, slot, flags)
        if kind == SYN_REPLY:
            (sid,) = _U32.unpack_from(payload)
            return SynReply(sid & 0x7FFFFFFF, decompressor.decompress(payload[4:]), flags)
        if kind == HEADERS:
            (sid,) = _U32.unpack_from(payload)
            return HeadersFrame(sid & 0x7FFFFFFF, decompressor.decompress(payload[4:]), flags)
        if kind == RST_STREAM:
            sid, status = struct.unpack_from(">LL", payload)
            return RstStream(sid & 0x7FFFFFFF, status, flags)
        if kind == SETTINGS:
            (count,) = _U32.unpack_from(payload)
            entries = []
            for i in range(count):
                word2, value = struct.unpack_from(">LL", payload, 4 + 8 * i)
                entries.append((word2 >> 24, word2 & 0xFFFFFF, value))
            return Settings(tuple(entries), flags)
        if kind == PING:
            return Ping(_U32.unpack_from(payload)[0], flags)
        if kind == GOAWAY:
            last, status = struct.unpack_from(">LL", payload) if len(payload) >= 8 else (_U32.unpack_from(payload)[0], 0)
            return GoAway(last & 0x7FFFFFFF, status, flags)
        if kind == WINDOW_UPDATE:
            sid, delta = struct.unpack_from(">LL", payload)
            return WindowUpdate(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF, flags)
    except struct.error as exc:
        raise ProtocolError(f"control frame of type {kind} is too short") from exc
    return None


async def read_frame(reader: asyncio.StreamReader, decompressor: HeaderDecompressor) -> Frame | None:
    """The next frame (None: an unknown control frame, skipped); IncompleteReadError at the end."""
    header = await reader.readexactly(8)
    _, _, hi, lo = _HEADER.unpack(header)
    payload = await reader.readexactly((hi << 16) | lo) if (hi or lo) else b""
    return decode(header, payload, decompressor)


# ------------------------------------------------------------------------------ session


@dataclass(eq=False)
class Stream:
    """One stream the peer opened. `read` gives its DATA until the peer's FIN or RST_STREAM
    (then b""); `write` sends DATA; `close` sends our FIN (half-close); `reset` aborts it."""

    session: Session
    stream_id: int
    headers: Headers
    _queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(STREAM_QUEUE_FRAMES))
    #: The peer finished its side (FIN or RST).
    remote_closed: bool = False
    #: The peer reset the stream (RST_STREAM): our writes go nowhere.
    was_reset: bool = False
    local_closed: bool = False

    def header(self, name: str, default: str = "") -> str:
        """The first value of a header (names are lowercase on the wire)."""
        values = self.headers.get(name.lower())
        return values[0] if values else default

    async def read(self) -> bytes:
        """The next chunk the peer sent; b"" at its end (FIN, reset, or the session's end)."""
        if self.remote_closed and self._queue.empty():
            return b""
        chunk = await self._queue.get()
        if chunk is None:
            self.remote_closed = True
            return b""
        return chunk

    async def write(self, data: bytes) -> None:
        """Send `data` (in frames of at most DATA_CHUNK). Writing after a reset or our own close
        is silently dropped: the peer no longer wants it."""
        if self.local_closed or self.was_reset:
            return
        view = memoryview(data)
        for start in range(0, len(view), DATA_CHUNK):
            await self.session.send(DataFrame(self.stream_id, bytes(view[start : start + DATA_CHUNK])))

    async def close(self) -> None:
        """Our FIN: we send nothing more (the peer may still send)."""
        if self.local_closed or self.was_reset:
            return
        self.local_closed = True
        await self.session.send(DataFrame(self.stream_id, b"", FLAG_FIN))

    async def reset(self, status: int = CANCEL) -> None:
        if self.was_reset:
            return
        self.was_reset = self.local_closed = True
        self._finish()
        await self.session.send(RstStream(self.stream_id, status))

    def _finish(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            try:
                self._queue.put_nowait(None)
            except asyncio.QueueFull:
                # A reader that is behind reads the rest first, then sees remote_closed.
                pass


class Session:
    """The server side of one SPDY/3.1 connection over an asyncio stream pair. Every stream the
    peer opens is answered with an empty SYN_REPLY at once (as the kubelet's upgrader does) and
    queued for `accept`. PINGs from the peer are answered; GOAWAY from the peer ends `accept`."""

    def __init__(self, reader: asyncio.StreamReader, writer: Any) -> None:
        #: `writer` needs write(bytes), async drain(), close(); an asyncio.StreamWriter will do.
        self._reader = reader
        self._writer = writer
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor()
        self._streams: dict[int, Stream] = {}
        self._incoming: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._last_peer_id = 0
        self._task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        #: The 101 answer when the session came from `accept_upgrade` (what the aiohttp handler
        #: returns once the session is over).
        self.response: web.StreamResponse | None = None
        self.goaway_received = False
        self._goaway_sent = False

    async def __aenter__(self) -> Session:
        self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="spdy-session")

    async def send(self, frame: Frame) -> None:
        """Write one frame (whole: frames never interleave) and wait while the peer is slow."""
        if self.closed.is_set():
            return
        self._writer.write(encode(frame, self._compressor))
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError):
            self._lost()

    async def accept(self, timeout: float | None = None) -> Stream | None:
        """The next stream the peer opens; None when the session ended (or the peer went away)
        first. TimeoutError after `timeout` seconds."""
        if timeout is None:
            return await self._incoming.get()
        return await asyncio.wait_for(self._incoming.get(), timeout)

    async def close(self, status: int = GOAWAY_OK) -> None:
        """GOAWAY, then drop the connection (streams still open see their end)."""
        if not self.closed.is_set() and not self._goaway_sent:
            self._goaway_sent = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send(GoAway(self._last_peer_id, status)), 5)
        self._lost()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _lost(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for stream in self._streams.values():
            stream._finish()
        self._incoming.put_nowait(None)
        with contextlib.suppress(Exception):
            self._writer.close()

    async def _run(self) -> None:
        try:
            while True:
                frame = await read_frame(self._reader, self._decompressor)
                if frame is not None:
                    await self._handle(frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as exc:
            log.warning("SPDY peer broke the protocol", error=str(exc))
            with contextlib.suppress(Exception):
                await self.send(GoAway(self._last_peer_id, GOAWAY_PROTOCOL_ERROR))
        finally:
            self._lost()

    async def _handle(self, frame: Frame) -> None:
        if isinstance(frame, DataFrame):
            stream = self._streams.get(frame.stream_id)
            if stream is None:
                return  # a stream we reset or never had: drop, as spdystream does
            if frame.data and not stream.remote_closed:
                await stream._queue.put(frame.data)
            if frame.flags & FLAG_FIN:
                stream._finish()
        elif isinstance(frame, SynStream):
            sid = frame.stream_id
            if sid % 2 == 0 or sid <= self._last_peer_id:
                await self.send(RstStream(sid, PROTOCOL_ERROR))
                return
            self._last_peer_id = sid
            if self._goaway_sent:
                await self.send(RstStream(sid, REFUSED_STREAM))
                return
            stream = Stream(self, sid, frame.headers)
            self._streams[sid] = stream
            if frame.flags & FLAG_FIN:
                stream._finish()
            if frame.flags & FLAG_UNIDIRECTIONAL:
                stream.local_closed = True
            await self.send(SynReply(sid, {}))
            self._incoming.put_nowait(stream)
        elif isinstance(frame, RstStream):
            stream = self._streams.pop(frame.stream_id, None)
            if stream is not None:
                stream.was_reset = stream.local_closed = True
                stream._finish()
        elif isinstance(frame, Ping):
            if frame.ping_id % 2 == 1:  # the client's (odd) pings are echoed; ours would be even
                await self.send(frame)
        elif isinstance(frame, GoAway):
            self.goaway_received = True
            self._incoming.put_nowait(None)
        elif isinstance(frame, HeadersFrame):
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                for key, values in frame.headers.items():
                    stream.headers.setdefault(key, []).extend(values)
                if frame.flags & FLAG_FIN:
                    stream._finish()
        # SETTINGS, WINDOW_UPDATE and SYN_REPLY (we open no streams) need nothing.


# ------------------------------------------------------------------------------ aiohttp


class _Feed:
    """What aiohttp's request handler feeds the bytes after the upgrade to (`set_parser`)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()

    def set_exception(self, exc: BaseException, exc_cause: BaseException | None = None) -> None:
        self.reader.set_exception(exc)


class _TransportWriter:
    """write/drain/close on the transport aiohttp served the request on."""

    def __init__(self, request: web.Request) -> None:
        self._transport = request.transport
        self._protocol = request.protocol

    def write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self._transport.write(data)

    async def drain(self) -> None:
        # aiohttp's protocol pauses writers while the transport's buffer is full (as its own
        # WebSocket writer waits); the transport closing wakes it with ConnectionResetError.
        await self._protocol._drain_helper()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def upgrade_requested(request: web.Request) -> bool:
    """True when the request asks to switch to SPDY/3.1."""
    connection = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return "upgrade" in connection and request.headers.get("Upgrade", "").lower() == UPGRADE.lower()


async def accept_upgrade(request: web.Request, headers: Mapping[str, str] | None = None) -> Session:
    """Answer 101 Switching Protocols (with `headers`) and take the connection over: the bytes
    that follow are this session's (TLS or not). The caller runs the session (`async with`) and
    returns the (already sent) response to aiohttp afterwards; the connection is closed then."""
    response = web.StreamResponse(
        status=101, headers={"Connection": "Upgrade", "Upgrade": UPGRADE, **dict(headers or {})}
    )
    await response.prepare(request)
    reader = asyncio.StreamReader(limit=2**20)
    transport = request.transport
    if transport is not None:
        reader.set_transport(transport)  # pauses reading while the session is behind
    request.protocol.set_parser(_Feed(reader))  # type: ignore[arg-type]
    session = Session(reader, _TransportWriter(request))
    session.response = response
    return session
