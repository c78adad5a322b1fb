"""SPDY/3.1 as the API server's client (moby/spdystream) speaks it: frames byte for byte, header
blocks compressed with the SPDY/3 dictionary (vectors written by spdystream's own framer), and a
server session over a real aiohttp server, driven by a client written from the framing."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from kod import spdy
from tests.unit.spdy_client import Client

pytestmark = pytest.mark.timeout(30)

#: Three SYN_STREAMs in a row, as github.com/moby/spdystream/spdy's Framer (v0.5.1) writes them on
#: one connection (its compression state carries over): {streamType: error} on 1,
#: {streamType: stdout} with FIN on 3, {streamType: data, port: 8080, requestID: 0} on 5.
GO_SYN_STREAMS = [
    "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff",
    "800300010100001900000003000000000000c22ac5565c92925f5a02000000ffff",
    "800300010000002f0000000500000000000002a5550c395009940829cc8bc0f9c6c2c0c280818181b30812f999a04cc16800000000ffff",
]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (spdy.DataFrame(1, b"hi", spdy.FLAG_FIN), "0000000101000002" "6869"),
        (spdy.DataFrame(0x7FFFFFFF, b""), "7fffffff00000000"),
        (spdy.Ping(1), "8003000600000004" "00000001"),
        (spdy.RstStream(3, spdy.CANCEL), "8003000300000008" "00000003" "00000005"),
        (spdy.GoAway(5), "8003000700000008" "00000005" "00000000"),
        (spdy.WindowUpdate(1, 65536), "8003000900000008" "00000001" "00010000"),
        (spdy.Settings(((0, 7, 65536),)), "800300040000000c" "00000001" "00000007" "00010000"),
    ],
)
def test_frames_without_headers_are_byte_exact(frame: spdy.Frame, expected: str) -> None:
    raw = spdy.encode(frame)
    assert raw.hex() == expected
    assert spdy.decode(raw[:8], raw[8:], spdy.HeaderDecompressor()) == frame


def test_the_dictionary_is_spdy_3s_whose_adler32_the_peers_zlib_header_names() -> None:
    assert len(spdy.DICTIONARY) == 1423
    # spdystream's first header block opens with a zlib header whose FDICT id is this checksum.
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2
    assert GO_SYN_STREAMS[0][36:48] == "78f9e3c6a7c2"


def test_syn_streams_written_by_spdystream_decode_in_sequence() -> None:
    inflate = spdy.HeaderDecompressor()
    frames = []
    for text in GO_SYN_STREAMS:
        raw = bytes.fromhex(text)
        frames.append(spdy.decode(raw[:8], raw[8:], inflate))
    assert frames == [
        spdy.SynStream(1, {"streamtype": ["error"]}),
        spdy.SynStream(3, {"streamtype": ["stdout"]}, flags=spdy.FLAG_FIN),
        spdy.SynStream(5, {"port": ["8080"], "requestid": ["0"], "streamtype": ["data"]}),
    ]


def test_our_header_blocks_round_trip_on_one_compression_stream() -> None:
    deflate, inflate = spdy.HeaderCompressor(), spdy.HeaderDecompressor()
    for headers in ({}, {"streamtype": ["stdin"]}, {"x-multi": ["a", "b"], "port": ["1"]}, {"streamtype": ["stdin"]}):
        raw = spdy.encode(spdy.SynReply(7, headers), deflate)
        assert spdy.decode(raw[:8], raw[8:], inflate) == spdy.SynReply(7, headers)


@pytest.mark.parametrize(
    "block",
    [
        b"\x00\x00\x00\x01\x00\x00\x00\x01A\x00\x00\x00\x00",  # an uppercase name
        b"\x00\x00\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x00\x00",  # twice
        b"\x00\x00\x00\x01\x00\x00\x00\x09a",  # truncated
    ],
)
def test_malformed_header_blocks_are_protocol_errors(block: bytes) -> None:
    with pytest.raises(spdy.ProtocolError):
        spdy.parse_header_block(block)


def test_another_spdy_version_is_a_protocol_error() -> None:
    raw = bytearray(spdy.encode(spdy.Ping(1)))
    raw[1] = 2
    with pytest.raises(spdy.ProtocolError, match="version 2"):
        spdy.decode(bytes(raw[:8]), bytes(raw[8:]), spdy.HeaderDecompressor())


# --- a session over a real server -------------------------------------------------------------


Handler = Callable[[spdy.Session], Any]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Any]]:
    """A real server on a free port, run as production runs it (no handler cancellation when
    the client goes away: the session sees the end itself)."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> int:
        async def upgrade(request: web.Request) -> web.StreamResponse:
            session = await spdy.accept_upgrade(request, {"X-Stream-Protocol-Version": "test"})
            async with session:
                await handler(session)
            assert session.response is not None
            return session.response

        app = web.Application()
        app.router.add_post("/", upgrade)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_stream_is_answered_echoed_half_closed_and_the_session_ends_with_goaway(serve: Any) -> None:
    async def echo(session: spdy.Session) -> None:
        stream = await session.accept()
        assert stream is not None and stream.header("streamtype") == "stdin"
        while chunk := await stream.read():
            await stream.write(chunk.upper())
        await stream.close()

    port = await serve(echo)
    client, status, headers = await Client.connect(port)
    assert status == 101 and headers["upgrade"] == "SPDY/3.1" and headers["x-stream-protocol-version"] == "test"
    sid = client.open({"streamtype": ["stdin"]})
    assert await client.frame() == spdy.SynReply(sid, {})
    client.send(spdy.DataFrame(sid, b"hello "))
    client.send(spdy.Ping(1))
    client.send(spdy.DataFrame(sid, b"world", spdy.FLAG_FIN))
    frames = await client.frames_until_close()
    assert spdy.Ping(1) in frames
    data = [f for f in frames if isinstance(f, spdy.DataFrame)]
    assert b"".join(f.data for f in data) == b"HELLO WORLD"
    assert data[-1].flags & spdy.FLAG_FIN
    assert isinstance(frames[-1], spdy.GoAway) and frames[-1].last_good_stream_id == sid


async def test_big_writes_are_cut_into_frames_and_arrive_whole(serve: Any) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def send_big(session: spdy.Session) -> None:
        stream = await session.accept()
        assert stream is not None
        await stream.write(payload)
        await stream.close()

    port = await serve(send_big)
    client, _, _ = await Client.connect(port)
    sid = client.open({"streamtype": ["stdout"]})
    frames = await client.frames_until_close()
    data = [f for f in frames if isinstance(f, spdy.DataFrame) and f.stream_id == sid]
    assert max(len(f.data) for f in data) <= spdy.DATA_CHUNK
    assert b"".join(f.data for f in data) == payload


async def test_a_reset_stream_reads_as_ended_and_bad_stream_ids_are_refused(serve: Any) -> None:
    seen: list[bytes] = []

    async def reader(session: spdy.Session) -> None:
        stream = await session.accept()
        assert stream is not None
        seen.append(await stream.read())
        seen.append(await stream.read())
        assert stream.was_reset

    port = await serve(reader)
    client, _, _ = await Client.connect(port)
    sid = client.open({"streamtype": ["stdin"]})
    assert await client.frame() == spdy.SynReply(sid, {})
    client.send(spdy.SynStream(2, {}))  # even ids are the server's: refused
    assert await client.frame() == spdy.RstStream(2, spdy.PROTOCOL_ERROR)
    client.send(spdy.DataFrame(sid, b"x"))
    client.send(spdy.RstStream(sid, spdy.CANCEL))
    await client.frames_until_close()
    assert seen == [b"x", b""]


async def test_a_client_that_goes_away_ends_accept_and_reads(serve: Any) -> None:
    ended = asyncio.Event()

    async def wait(session: spdy.Session) -> None:
        stream = await session.accept()
        assert stream is not None
        assert await stream.read() == b""
        assert await session.accept() is None
        ended.set()

    port = await serve(wait)
    client, _, _ = await Client.connect(port)
    client.open({"streamtype": ["stdin"]})
    await client.frame()
    client.writer.close()
    await asyncio.wait_for(ended.wait(), 5)


def test_a_header_block_that_inflates_past_the_limit_is_a_protocol_error() -> None:
    """16 MiB of zlib can inflate to gigabytes: a block is decompressed only up to the limit."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    inflate = spdy.HeaderDecompressor()
    small = spdy.HeaderCompressor()
    assert spdy.HeaderDecompressor().decompress(small.compress({"streamtype": "error"})) == {"streamtype": ["error"]}
    bomb = deflate.compress(bytes(spdy.MAX_HEADER_BLOCK + 1)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 4096
    with pytest.raises(spdy.ProtocolError, match="larger than"):
        inflate.decompress(bomb)
