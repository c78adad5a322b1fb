"""Logs pass through interlink as a stream: options reach the sidecar, follow streams as lines are
written, a slow reader slows the sidecar, and a client that leaves closes the sidecar's stream."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from interlink.app import create_app
from tests.unit.interlink_fake_sidecar import AUTH, CLIENT_TOKEN, FakeSidecar, interlink_settings, wait_for

LOGS = "/v1/pods/default/app/containers/main/logs"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSidecar]:
    sidecar = FakeSidecar("docker")
    await sidecar.start()
    sidecar.add_pod("default", "app", "u-app")
    yield sidecar
    await sidecar.stop()


@pytest.fixture
async def interlink(aiohttp_client: Any, fake: FakeSidecar) -> TestClient:
    return await aiohttp_client(create_app(interlink_settings(fake)), server_kwargs={"handler_cancellation": True})


async def test_logs_come_back_as_written_and_options_reach_the_sidecar(interlink: TestClient, fake: FakeSidecar) -> None:
    for i in range(5):
        fake.append_log("default", "app", "main", f"line {i}\n".encode())
    resp = await interlink.get(LOGS, params={"tailLines": "2", "timestamps": "true"}, headers=AUTH)
    assert resp.status == 200
    assert await resp.text() == "line 3\nline 4\n"
    assert fake.seen[-1].query == {"tailLines": "2", "timestamps": "true"}


async def test_follow_streams_lines_as_they_are_written(interlink: TestClient, fake: FakeSidecar) -> None:
    fake.append_log("default", "app", "main", b"first\n")
    resp = await interlink.get(LOGS, params={"follow": "true"}, headers=AUTH)
    assert resp.status == 200
    assert await asyncio.wait_for(resp.content.readline(), 5) == b"first\n"
    fake.append_log("default", "app", "main", b"second\n")
    assert await asyncio.wait_for(resp.content.readline(), 5) == b"second\n"
    assert fake.open_log_streams == 1
    resp.close()  # the user presses ^C on `kubectl logs -f`
    await wait_for(lambda: fake.open_log_streams == 0, what="the sidecar's log stream to close")


async def test_a_quiet_follow_stream_is_closed_upstream_when_the_client_leaves(interlink: TestClient, fake: FakeSidecar) -> None:
    resp = await interlink.get(LOGS, params={"follow": "true"}, headers=AUTH)
    assert resp.status == 200
    await wait_for(lambda: fake.open_log_streams == 1, what="the sidecar's log stream")
    resp.close()  # nothing was ever written: only the disconnect can end it
    await wait_for(lambda: fake.open_log_streams == 0, what="the sidecar's log stream to close")


async def test_a_slow_reader_slows_the_sidecar_and_still_gets_everything(interlink: TestClient, fake: FakeSidecar) -> None:
    chunk = b"y" * (1 << 20)
    total = 32 * len(chunk)
    for _ in range(32):
        fake.append_log("default", "app", "main", chunk)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", interlink.port))
    sock.sendall(f"GET {LOGS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\r\n".encode())
    await wait_for(lambda: fake.log_bytes_sent > 0, what="the sidecar to start sending")
    # Wait until the sidecar is stuck (nothing more sent for a while) while nobody reads.
    last, stable_since = -1, asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - stable_since < 0.5:
        if fake.log_bytes_sent != last:
            last, stable_since = fake.log_bytes_sent, asyncio.get_running_loop().time()
        await asyncio.sleep(0.05)
    stalled_at = fake.log_bytes_sent
    assert stalled_at < total / 2, "the sidecar sent everything although the client read nothing"

    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
    received = len(head.partition(b"\r\n\r\n")[2])
    tail = b""
    while not tail.endswith(b"0\r\n\r\n"):  # the last chunk of a chunked body
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        assert data, "interlink closed the stream early"
        received += len(data)
        tail = (tail + data)[-16:]
    sock.close()
    assert fake.log_bytes_sent == total
    assert received >= total  # chunked framing adds a little on top of the payload
    print(f"sidecar stalled after {stalled_at / 2**20:.1f} MiB of {total / 2**20:.0f} MiB")


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ({"tailLines": "-1"}, "tailLines"),
        ({"follow": "maybe"}, "follow"),
        ({"sinceTime": "yesterday"}, "sinceTime"),
        ({"color": "true"}, "unknown query parameter"),
    ],
)
async def test_bad_log_options_are_400_with_a_message(interlink: TestClient, fake: FakeSidecar, query: dict[str, str], needle: str) -> None:
    resp = await interlink.get(LOGS, params=query, headers=AUTH)
    body = await resp.json()
    assert resp.status == 400 and needle in body["message"]
    assert not [s for s in fake.seen if s.path.endswith("/logs")]


async def test_logs_of_an_unknown_pod_are_404(interlink: TestClient) -> None:
    resp = await interlink.get("/v1/pods/default/nope/containers/main/logs", headers=AUTH)
    assert resp.status == 404


async def test_a_log_whose_sidecar_goes_away_is_cut_not_ended_cleanly(interlink: TestClient, fake: FakeSidecar) -> None:
    fake.append_log("default", "app", "main", b"before\n")
    resp = await interlink.get(LOGS, params={"follow": "true"}, headers=AUTH)
    assert await asyncio.wait_for(resp.content.readline(), 5) == b"before\n"
    await fake.stop()  # the sidecar dies mid-stream
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.content.read(), 10)
