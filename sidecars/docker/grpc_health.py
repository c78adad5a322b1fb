"""A gRPC health check (grpc.health.v1.Health/Check) over plaintext HTTP/2, for grpc probes.

    result, message = await check("10.0.0.5", 9090, service="", timeout=1.0, dial=sandbox.connect)

The kubelet's grpc probe (pkg/probe/grpc) dials the pod's address without TLS and calls Check
(here `dial` makes the connection, from inside the pod's network namespace: `netns.py`);
SERVING is success, anything else a failure with the kubelet's message. No gRPC library is among
the project's dependencies and one call needs very little of HTTP/2, so this speaks it directly:
the client preface, SETTINGS (acknowledged both ways), one HEADERS and one DATA frame out; in,
HEADERS (HPACK: static and dynamic table, Huffman strings), DATA and the trailers, PING answered,
RST_STREAM and GOAWAY taken as errors. One connection per check, closed after it, as the
kubelet's probe does. Not supported (never needed for a Check): server push, padding on
outgoing frames, flow control beyond the defaults (the answer is a few bytes), TLS.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from urllib.parse import unquote

from sidecars.docker.netns import Dial

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
METHOD = "/grpc.health.v1.Health/Check"
USER_AGENT = "kube-probe/1.35"

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_FRAME = struct.Struct(">I")

#: HealthCheckResponse.ServingStatus names.
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
#: gRPC status codes as Go's grpc prints them.
CODE_NAMES = {
    0: "OK", 1: "Canceled", 2: "Unknown", 3: "InvalidArgument", 4: "DeadlineExceeded", 5: "NotFound",
    6: "AlreadyExists", 7: "PermissionDenied", 8: "ResourceExhausted", 9: "FailedPrecondition", 10: "Aborted",
    11: "OutOfRange", 12: "Unimplemented", 13: "Internal", 14: "Unavailable", 15: "DataLoss", 16: "Unauthenticated",
}
UNIMPLEMENTED, DEADLINE_EXCEEDED = 12, 4

# ------------------------------------------------------------------------------ HPACK (RFC 7541)

STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""), ("cache-control", ""),
    ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""), ("date", ""),
    ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""), ("if-match", ""),
    ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""), ("if-unmodified-since", ""),
    ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""), ("proxy-authenticate", ""),
    ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""),
    ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)

#: The Huffman code of every symbol 0..256 (RFC 7541 Appendix B), as "bits:hex" in symbol order.
_HUFFMAN = (
    "13:1ff8 23:7fffd8 28:fffffe2 28:fffffe3 28:fffffe4 28:fffffe5 28:fffffe6 28:fffffe7 "
    "28:fffffe8 24:ffffea 30:3ffffffc 28:fffffe9 28:fffffea 30:3ffffffd 28:fffffeb 28:fffffec "
    "28:fffffed 28:fffffee 28:fffffef 28:ffffff0 28:ffffff1 28:ffffff2 30:3ffffffe 28:ffffff3 "
    "28:ffffff4 28:ffffff5 28:ffffff6 28:ffffff7 28:ffffff8 28:ffffff9 28:ffffffa 28:ffffffb 6:14 "
    "10:3f8 10:3f9 12:ffa 13:1ff9 6:15 8:f8 11:7fa 10:3fa 10:3fb 8:f9 11:7fb 8:fa 6:16 6:17 6:18 "
    "5:0 5:1 5:2 6:19 6:1a 6:1b 6:1c 6:1d 6:1e 6:1f 7:5c 8:fb 15:7ffc 6:20 12:ffb 10:3fc 13:1ffa "
    "6:21 7:5d 7:5e 7:5f 7:60 7:61 7:62 7:63 7:64 7:65 7:66 7:67 7:68 7:69 7:6a 7:6b 7:6c 7:6d "
    "7:6e 7:6f 7:70 7:71 7:72 8:fc 7:73 8:fd 13:1ffb 19:7fff0 13:1ffc 14:3ffc 6:22 15:7ffd 5:3 "
    "6:23 5:4 6:24 5:5 6:25 6:26 6:27 5:6 7:74 7:75 6:28 6:29 6:2a 5:7 6:2b 7:76 6:2c 5:8 5:9 "
    "6:2d 7:77 7:78 7:79 7:7a 7:7b 15:7ffe 11:7fc 14:3ffd 13:1ffd 28:ffffffc 20:fffe6 22:3fffd2 "
    "20:fffe7 20:fffe8 22:3fffd3 22:3fffd4 22:3fffd5 23:7fffd9 22:3fffd6 23:7fffda 23:7fffdb "
    "23:7fffdc 23:7fffdd 23:7fffde 24:ffffeb 23:7fffdf 24:ffffec 24:ffffed 22:3fffd7 23:7fffe0 "
    "24:ffffee 23:7fffe1 23:7fffe2 23:7fffe3 23:7fffe4 21:1fffdc 22:3fffd8 23:7fffe5 22:3fffd9 "
    "23:7fffe6 23:7fffe7 24:ffffef 22:3fffda 21:1fffdd 20:fffe9 22:3fffdb 22:3fffdc 23:7fffe8 "
    "23:7fffe9 21:1fffde 23:7fffea 22:3fffdd 22:3fffde 24:fffff0 21:1fffdf 22:3fffdf 23:7fffeb "
    "23:7fffec 21:1fffe0 21:1fffe1 22:3fffe0 21:1fffe2 23:7fffed 22:3fffe1 23:7fffee 23:7fffef "
    "20:fffea 22:3fffe2 22:3fffe3 22:3fffe4 23:7ffff0 22:3fffe5 22:3fffe6 23:7ffff1 26:3ffffe0 "
    "26:3ffffe1 20:fffeb 19:7fff1 22:3fffe7 23:7ffff2 22:3fffe8 25:1ffffec 26:3ffffe2 26:3ffffe3 "
    "26:3ffffe4 27:7ffffde 27:7ffffdf 26:3ffffe5 24:fffff1 25:1ffffed 19:7fff2 21:1fffe3 "
    "26:3ffffe6 27:7ffffe0 27:7ffffe1 26:3ffffe7 27:7ffffe2 24:fffff2 21:1fffe4 21:1fffe5 "
    "26:3ffffe8 26:3ffffe9 28:ffffffd 27:7ffffe3 27:7ffffe4 27:7ffffe5 20:fffec 24:fffff3 "
    "20:fffed 21:1fffe6 22:3fffe9 21:1fffe7 21:1fffe8 23:7ffff3 22:3fffea 22:3fffeb 25:1ffffee "
    "25:1ffffef 24:fffff4 24:fffff5 26:3ffffea 23:7ffff4 26:3ffffeb 27:7ffffe6 26:3ffffec "
    "26:3ffffed 27:7ffffe7 27:7ffffe8 27:7ffffe9 27:7ffffea 27:7ffffeb 28:ffffffe 27:7ffffec "
    "27:7ffffed 27:7ffffee 27:7ffffef 27:7fffff0 26:3ffffee 30:3fffffff "
)
_DECODE: dict[tuple[int, int], int] = {
    (int(bits), int(code, 16)): sym
    for sym, (bits, code) in enumerate(item.split(":") for item in _HUFFMAN.split())
}
_EOS = 256


class ProtocolError(Exception):
    """The peer spoke HTTP/2 or HPACK wrongly."""


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded HPACK string (padding: the most significant bits of EOS)."""
    out = bytearray()
    code = length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            sym = _DECODE.get((length, code))
            if sym is not None:
                if sym == _EOS:
                    raise ProtocolError("EOS in a Huffman string")
                out.append(sym)
                code = length = 0
            elif length > 30:
                raise ProtocolError("bad Huffman code")
    if length > 7 or code != (1 << length) - 1:
        raise ProtocolError("bad Huffman padding")
    return bytes(out)


def encode_int(value: int, prefix: int, first: int = 0) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """Literal header fields without indexing, new names, no Huffman: valid for any decoder."""
    out = bytearray()
    for name, value in headers:
        n, v = name.encode(), value.encode()
        out += b"\x00" + encode_int(len(n), 7) + n + encode_int(len(v), 7) + v
    return bytes(out)


class Decoder:
    """An HPACK decoder with its dynamic table."""

    def __init__(self, max_size: int = 4096) -> None:
        self.max_size = max_size
        self.table: list[tuple[str, str]] = []

    def _size(self) -> int:
        return sum(32 + len(n) + len(v) for n, v in self.table)

    def _add(self, name: str, value: str) -> None:
        self.table.insert(0, (name, value))
        while self.table and self._size() > self.max_size:
            self.table.pop()

    def _entry(self, index: int) -> tuple[str, str]:
        if index <= 0:
            raise ProtocolError("header index 0")
        if index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        try:
            return self.table[index - len(STATIC_TABLE) - 1]
        except IndexError:
            raise ProtocolError(f"header index {index} out of range") from None

    @staticmethod
    def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
        if pos >= len(data):
            raise ProtocolError("truncated header block")
        limit = (1 << prefix) - 1
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            if pos >= len(data):
                raise ProtocolError("truncated integer")
            byte = data[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos

    def _string(self, data: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(data):
            raise ProtocolError("truncated string")
        huffman = bool(data[pos] & 0x80)
        length, pos = self._int(data, pos, 7)
        raw = data[pos:pos + length]
        if len(raw) != length:
            raise ProtocolError("truncated string")
        return (huffman_decode(raw) if huffman else raw).decode("utf-8", "replace"), pos + length

    def decode(self, data: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        while pos < len(data):
            byte = data[pos]
            if byte & 0x80:
                index, pos = self._int(data, pos, 7)
                out.append(self._entry(index))
                continue
            if byte & 0xE0 == 0x20:
                size, pos = self._int(data, pos, 5)
                self.max_size = size
                while self.table and self._size() > self.max_size:
                    self.table.pop()
                continue
            indexing = bool(byte & 0x40)
            index, pos = self._int(data, pos, 6 if indexing else 4)
            if index:
                name = self._entry(index)[0]
            else:
                name, pos = self._string(data, pos)
            value, pos = self._string(data, pos)
            if indexing:
                self._add(name, value)
            out.append((name, value))
        return out


# ------------------------------------------------------------------------------ the call

def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _FRAME.pack(len(payload))[1:] + bytes([kind, flags]) + _FRAME.pack(stream & 0x7FFFFFFF) + payload


def request_message(service: str) -> bytes:
    """A length-prefixed HealthCheckRequest (field 1: service)."""
    body = b""
    if service:
        raw = service.encode()
        body = b"\x0a" + _varint(len(raw)) + raw
    return b"\x00" + struct.pack(">I", len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def response_status(message: bytes) -> int:
    """The `status` (field 1) of a HealthCheckResponse; 0 (UNKNOWN) when absent."""
    pos, status = 0, 0
    while pos < len(message):
        key = 0
        shift = 0
        while True:
            byte = message[pos]
            pos += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value = shift = 0
            while True:
                byte = message[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            if field == 1:
                status = value
        elif wire_type == 2:
            length = shift = 0
            while True:
                byte = message[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            pos += length
        elif wire_type == 5:
            pos += 4
        elif wire_type == 1:
            pos += 8
        else:
            raise ProtocolError("bad protobuf wire type")
    return status


def go_duration(seconds: float) -> str:
    return f"{seconds:g}s"


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    head = await reader.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    kind, flags = head[3], head[4]
    stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
    payload = await reader.readexactly(length) if length else b""
    return kind, flags, stream, payload


def _header_block(kind: int, flags: int, payload: bytes) -> bytes:
    if kind == HEADERS:
        pad = 0
        if flags & PADDED:
            pad, payload = payload[0], payload[1:]
        if flags & PRIORITY:
            payload = payload[5:]
        return payload[: len(payload) - pad] if pad else payload
    return payload


async def call(host: str, port: int, service: str, *, dial: Dial) -> tuple[int, str, int | None]:
    """One Check on a connection `dial` makes: (grpc status code, grpc message, serving status
    or None when no answer)."""
    sock = await dial(host, port)
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        headers = encode_headers([
            (":method", "POST"), (":scheme", "http"), (":path", METHOD), (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", USER_AGENT),
        ])
        writer.write(
            PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS, 1, headers)
            + frame(DATA, END_STREAM, 1, request_message(service))
        )
        await writer.drain()
        decoder = Decoder()
        fields: dict[str, str] = {}
        body = bytearray()
        block = bytearray()
        block_ends_stream = False
        while True:
            kind, flags, stream, payload = await _read_frame(reader)
            if kind == SETTINGS and not flags & ACK:
                writer.write(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                writer.write(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                code = int.from_bytes(payload[4:8], "big") if len(payload) >= 8 else 0
                raise ProtocolError(f"connection closed by the server (GOAWAY, error code {code})")
            elif stream != 1:
                continue
            elif kind == RST_STREAM:
                code = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else 0
                raise ProtocolError(f"stream reset by the server (error code {code})")
            elif kind in (HEADERS, CONTINUATION):
                block += _header_block(kind, flags, payload)
                if kind == HEADERS:
                    block_ends_stream = bool(flags & END_STREAM)
                if flags & END_HEADERS:
                    for name, value in decoder.decode(bytes(block)):
                        fields[name] = value
                    block.clear()
                    if block_ends_stream:
                        break
            elif kind == DATA:
                if flags & PADDED and payload:
                    pad = payload[0]
                    payload = payload[1: len(payload) - pad]
                body += payload
                if flags & END_STREAM:
                    break
        await writer.drain()
    finally:
        writer.close()
    if fields.get(":status", "200") != "200":
        return 2 if fields.get(":status") != "404" else UNIMPLEMENTED, f"unexpected HTTP status code received from server: {fields.get(':status')}", None
    code = int(fields.get("grpc-status") or 2) if "grpc-status" in fields else 2
    message = unquote(fields.get("grpc-message", ""))
    serving = None
    if code == 0 and len(body) >= 5:
        size = struct.unpack(">I", bytes(body[1:5]))[0]
        serving = response_status(bytes(body[5:5 + size]))
    return code, message, serving


#: grpc-go's connection backoff (its default: 1 s, x1.6, jitter 0.2), with which the kubelet's
#: blocking dial redials a refused connection until the probe's deadline.
REDIAL_FIRST, REDIAL_FACTOR, REDIAL_JITTER = 1.0, 1.6, 0.2
#: A redial that would end this close to the deadline is not tried: the dial fails instead, so
#: that its message, not the rpc's, is the one the probe reports.
REDIAL_MARGIN = 0.05


def _redialing(dial: Dial, deadline: float, dialled: list[bool]) -> Dial:
    """`dial`, redialled after a refusal (the server not listening yet) until `deadline` (loop
    time), as grpc-go's blocking dial does; `dialled` becomes [True] once a connection is made."""
    async def redial(host: str, port: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        delay = REDIAL_FIRST
        while True:
            try:
                sock = await dial(host, port)
            except OSError:
                pause = delay * random.uniform(1 - REDIAL_JITTER, 1 + REDIAL_JITTER)
                if loop.time() + pause > deadline - REDIAL_MARGIN:
                    raise
                await asyncio.sleep(pause)
                delay *= REDIAL_FACTOR
                continue
            dialled.append(True)
            return sock
    return redial


async def check(host: str, port: int, service: str, timeout: float, *, dial: Dial) -> tuple[bool, str]:
    """A grpc probe: (healthy, the kubelet's message). kod errors from `dial` (the pod's
    namespace cannot be used) are the caller's."""
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    failed_to_connect = (
        f'timeout: failed to connect service "{addr}" within {go_duration(timeout)}: context deadline exceeded'
    )
    dialled: list[bool] = []
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with asyncio.timeout(timeout):
            try:
                code, message, serving = await call(host, port, service, dial=_redialing(dial, deadline, dialled))
            except OSError:
                return False, failed_to_connect
    except TimeoutError:
        return False, failed_to_connect if not dialled else f"timeout: health rpc did not complete within {go_duration(timeout)}"
    except (ProtocolError, asyncio.IncompleteReadError) as exc:
        return False, f"error: health rpc probe failed: rpc error: code = Unavailable desc = {exc}"
    if code == UNIMPLEMENTED:
        return False, (
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): " + message
        )
    if code == DEADLINE_EXCEEDED:
        return False, f"timeout: health rpc did not complete within {go_duration(timeout)}"
    if code != 0:
        return False, f"error: health rpc probe failed: rpc error: code = {CODE_NAMES.get(code, str(code))} desc = {message}"
    if serving != 1:
        return False, f'service unhealthy (responded with "{STATUS_NAMES.get(serving or 0, str(serving))}")'
    return True, "service is healthy"
