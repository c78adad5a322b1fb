"""port-forward as the kubelet serves it (portforward.k8s.io over SPDY): stream pairs keyed by
requestID, each carried over a `kod.streams` WebSocket to a real TCP server by the sidecar's
dialler and pump; half-closes, failures on the error stream, and big transfers intact."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from kod import errors, portforward, spdy, streams
from kod.http import ApiClient
from sidecars.docker import portforward as sidecar_portforward
from tests.unit.spdy_client import Client

pytestmark = pytest.mark.timeout(60)

BIG = os.urandom(1024 * 1024) * 8  # 8 MiB


async def _tcp_server() -> tuple[asyncio.Server, int]:
    """Echoes lines upper-cased; "big" sends BIG and closes; "half" reads to EOF, then answers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line == b"big\n":
            writer.write(BIG)
        elif line == b"half\n":
            rest = await reader.read()
            writer.write(b"got %d bytes after EOF\n" % len(rest))
        else:
            writer.write(line.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class Stack:
    """A kubelet-like port-forward endpoint whose dial goes, over a real WebSocket, to a
    sidecar-like endpoint that connects to `target` and pumps with the sidecar's own code."""

    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []
        self.api: ApiClient | None = None

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.runners.append(runner)
        return int(runner.addresses[0][1])

    async def start(self, target_port: int) -> int:
        async def sidecar(request: web.Request) -> web.StreamResponse:
            try:
                port = streams.parse_port_query(request.query).port
                if port != 1:
                    raise errors.InvalidInput(f"failed to connect to localhost:{port}: connection refused")
                sock = socket.create_connection(("127.0.0.1", target_port))
                sock.setblocking(False)
            except errors.KodError as exc:
                return streams.refusal(exc)
            ws = await streams.accept(request)
            await sidecar_portforward.carry(streams.Channels(ws), sock)
            return ws

        app = web.Application()
        app.router.add_get("/pf", sidecar)
        self.api = ApiClient(f"http://127.0.0.1:{await self._serve(app)}", None)

        async def dial(port: int) -> streams.Channels:
            assert self.api is not None
            return streams.Channels(await self.api.websocket("/pf", params={"port": port}))

        async def kubelet(request: web.Request) -> web.StreamResponse:
            session = await spdy.accept_upgrade(request, {portforward.PROTOCOL_HEADER: portforward.PROTOCOL})
            async with session:
                await portforward.serve(session, dial, pod="ns/pod", pair_timeout=1)
            assert session.response is not None
            return session.response

        kapp = web.Application()
        kapp.router.add_post("/portForward/ns/pod", kubelet)
        return await self._serve(kapp)

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()
        for runner in self.runners:
            await runner.cleanup()


@pytest.fixture
async def stack() -> AsyncIterator[tuple[Stack, int]]:
    server, port = await _tcp_server()
    s = Stack()
    kubelet_port = await s.start(port)
    yield s, kubelet_port
    await s.close()
    server.close()


def _pair(client: Client, request_id: str, port: int = 1) -> tuple[int, int]:
    error = client.open({"streamtype": ["error"], "port": [str(port)], "requestid": [request_id]})
    data = client.open({"streamtype": ["data"], "port": [str(port)], "requestid": [request_id]})
    return error, data


async def _until_ended(client: Client, want: set[int], timeout: float = 20) -> dict[int, bytes]:
    data: dict[int, bytes] = {}
    ended: set[int] = set()
    while not want <= ended:
        frame = await client.frame(timeout)
        if isinstance(frame, spdy.DataFrame):
            data[frame.stream_id] = data.get(frame.stream_id, b"") + frame.data
            if frame.flags & spdy.FLAG_FIN:
                ended.add(frame.stream_id)
        elif isinstance(frame, spdy.RstStream):
            ended.add(frame.stream_id)
    return data


async def test_two_connections_at_once_each_get_their_own_answer(stack: Any) -> None:
    _, port = stack
    client, status, headers = await Client.connect(port, "/portForward/ns/pod", {"X-Stream-Protocol-Version": "portforward.k8s.io"})
    assert status == 101 and headers["x-stream-protocol-version"] == "portforward.k8s.io"
    e0, d0 = _pair(client, "0")
    e1, d1 = _pair(client, "1")
    client.send(spdy.DataFrame(d1, b"second\n"))
    client.send(spdy.DataFrame(d0, b"first\n"))
    data = await _until_ended(client, {e0, d0, e1, d1})
    assert data[d0] == b"FIRST\n" and data[d1] == b"SECOND\n"
    assert data.get(e0, b"") == data.get(e1, b"") == b""


async def test_a_big_download_arrives_intact(stack: Any) -> None:
    _, port = stack
    client, _, _ = await Client.connect(port, "/portForward/ns/pod")
    error, data_id = _pair(client, "7")
    client.send(spdy.DataFrame(data_id, b"big\n"))
    data = await _until_ended(client, {error, data_id}, timeout=30)
    assert hashlib.sha256(data[data_id]).digest() == hashlib.sha256(BIG).digest()


async def test_the_clients_eof_reaches_the_pod_and_its_answer_still_comes_back(stack: Any) -> None:
    _, port = stack
    client, _, _ = await Client.connect(port, "/portForward/ns/pod")
    error, data_id = _pair(client, "0")
    client.send(spdy.DataFrame(data_id, b"half\nsome bytes"))
    client.send(spdy.DataFrame(data_id, b"", spdy.FLAG_FIN))
    data = await _until_ended(client, {error, data_id})
    assert data[data_id] == b"got 10 bytes after EOF\n"


async def test_a_refused_port_is_reported_on_the_pairs_error_stream(stack: Any) -> None:
    _, port = stack
    client, _, _ = await Client.connect(port, "/portForward/ns/pod")
    error, data_id = _pair(client, "0", port=81)
    bad_error, bad_data = _pair(client, "1", port=0)
    data = await _until_ended(client, {error, data_id, bad_error, bad_data})
    assert data[error].decode() == "error forwarding port 81 to pod ns/pod: failed to connect to localhost:81: connection refused"
    assert "port 0 must be within 1..65535" in data[bad_error].decode()


async def test_a_pair_that_never_completes_is_dropped(stack: Any) -> None:
    _, port = stack
    client, _, _ = await Client.connect(port, "/portForward/ns/pod")
    lonely = client.open({"streamtype": ["error"], "port": ["1"], "requestid": ["9"]})
    nameless = client.open({"streamtype": ["data"], "port": ["1"]})
    frames = []
    while not any(isinstance(f, spdy.RstStream) and f.stream_id == lonely for f in frames):
        frames.append(await client.frame(10))
    assert spdy.RstStream(nameless, spdy.PROTOCOL_ERROR) in frames


# The sidecar's dial into a pod's network namespace (and its refusals: a stale PID, the desktop's
# own namespace) is attacked in tests/unit/test_docker_sidecar_netns.py.
