"""The status push: interlink's watch aggregates the sidecars' streams, survives their restarts and
its own, and a slow watch client never holds up the others."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from interlink.app import create_app
from interlink.state import HUB
from kod.lines import read_lines
from kod.wire import WatchEvent
from tests.unit.interlink_fake_sidecar import CLIENT_TOKEN, AUTH, FakeSidecar, interlink_settings, pod_body, wait_for


class Watch:
    """A watch client: the events of one `GET /v1/watch`, in order."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self._lines = read_lines(resp.content, idle_seconds=5.0)

    async def next(self, *, heartbeats: bool = False) -> WatchEvent:
        while True:
            line = await anext(self._lines)
            event = WatchEvent.model_validate_json(line)
            if heartbeats or event.type != "HEARTBEAT":
                return event

    async def until(self, type_: str, name: str) -> WatchEvent:
        """Skip events until one of this type for this pod name."""
        while True:
            event = await self.next()
            if event.type == type_ and event.pod is not None and event.pod.name == name:
                return event


async def open_watch(client: TestClient) -> Watch:
    resp = await client.get("/v1/watch", headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    return Watch(resp)


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeSidecar, FakeSidecar]]:
    a, b = FakeSidecar("alpha"), FakeSidecar("beta")
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


async def test_watch_opens_with_every_pod_then_pushes_changes(aiohttp_client: Any, fakes: tuple[FakeSidecar, FakeSidecar]) -> None:
    a, b = fakes
    a.add_pod("default", "one", "u1")
    b.add_pod("other", "two", "u2", phase="Pending")
    client = await aiohttp_client(create_app(interlink_settings(a, b)))
    watch = await open_watch(client)

    sync = await watch.next()
    assert sync.type == "SYNC" and sync.pods is not None
    assert [(p.namespace, p.name, p.sidecar) for p in sync.pods] == [("default", "one", "alpha"), ("other", "two", "beta")]

    b.set_phase("other", "two", "Running", podIP="172.17.0.9")
    event = await watch.next()
    assert event.type == "STATUS" and event.pod is not None
    assert (event.pod.name, event.pod.phase, event.pod.podIP, event.pod.sidecar) == ("two", "Running", "172.17.0.9", "beta")

    await client.delete("/v1/pods/default/one", headers=AUTH)
    gone = await watch.until("DELETED", "one")
    assert gone.pod is not None and gone.pod.sidecar == "alpha"

    assert (await watch.next(heartbeats=True)).type == "HEARTBEAT"


async def test_a_created_pod_shows_up_once_per_change(aiohttp_client: Any, fakes: tuple[FakeSidecar, FakeSidecar]) -> None:
    a, _ = fakes
    client = await aiohttp_client(create_app(interlink_settings(a)))
    watch = await open_watch(client)
    assert (await watch.next()).pods == []
    await client.post("/v1/pods", json=pod_body("web", "u-web"), headers=AUTH)
    a.set_phase("default", "web", "Running")
    phases = [(await watch.next()).pod.phase for _ in range(2)]  # type: ignore[union-attr]
    assert phases == ["Pending", "Running"]  # the create answer and the stream agree: no duplicate


async def test_several_watch_clients_get_the_same_events(aiohttp_client: Any, fakes: tuple[FakeSidecar, FakeSidecar]) -> None:
    a, _ = fakes
    client = await aiohttp_client(create_app(interlink_settings(a)))
    watches = [await open_watch(client) for _ in range(3)]
    for w in watches:
        assert (await w.next()).type == "SYNC"
    a.add_pod("default", "p", "u")
    for w in watches:
        event = await w.next()
        assert event.type == "STATUS" and event.pod is not None and event.pod.name == "p"


async def test_a_sidecar_restart_is_repaired_by_its_resync(aiohttp_client: Any, fakes: tuple[FakeSidecar, FakeSidecar]) -> None:
    a, b = fakes
    a.add_pod("default", "kept", "u-kept")
    a.add_pod("default", "lost", "u-lost")
    b.add_pod("default", "elsewhere", "u-else")
    client = await aiohttp_client(create_app(interlink_settings(a, b)))
    watch = await open_watch(client)
    assert len((await watch.next()).pods or []) == 3

    await a.stop()
    # While the stream is down, one pod vanishes and one appears, with nobody to tell.
    a.forget("default", "lost")
    a.add_pod("default", "new", "u-new")
    await a.start()

    events: dict[str, str] = {}
    while len(events) < 2:
        event = await watch.next()
        assert event.pod is not None
        events[event.pod.name] = event.type
    assert events == {"lost": "DELETED", "new": "STATUS"}
    listed = await (await client.get("/v1/pods", headers=AUTH)).json()
    assert sorted(p["name"] for p in listed["items"]) == ["elsewhere", "kept", "new"]


@pytest.mark.parametrize("failure", ["stopped", "silent", "garbage"])
async def test_a_broken_sidecar_stream_is_reopened(aiohttp_client: Any, fakes: tuple[FakeSidecar, FakeSidecar], failure: str) -> None:
    a, _ = fakes
    client = await aiohttp_client(create_app(interlink_settings(a)))
    watch = await open_watch(client)
    await watch.next()
    await wait_for(lambda: a.watch_connects == 1, what="the first sidecar stream")
    if failure == "stopped":
        await a.stop()
        await a.start()
    else:
        a.watch_mode = failure
        a.emit(WatchEvent(type="HEARTBEAT", pods=[]))  # end the current stream: the next one misbehaves
        await wait_for(lambda: a.watch_connects >= 2, what="a misbehaving stream")
        a.watch_mode = None
    await wait_for(lambda: a.watch_connects >= 3 if failure != "stopped" else a.watch_connects >= 2,
                   what="a reconnect", timeout=10)
    # The healthy stream carries changes again, and the watch client never had to reconnect.
    a.add_pod("default", "after", "u-after")
    event = await watch.until("STATUS", "after")
    assert event.pod is not None and event.pod.sidecar == "alpha"


async def test_a_restarted_interlink_knows_every_pod(aiohttp_client: Any, fakes: tuple[FakeSidecar, FakeSidecar]) -> None:
    a, b = fakes
    first = await aiohttp_client(create_app(interlink_settings(a, b)))
    await first.post("/v1/pods", json=pod_body("web", "u-web"), headers=AUTH)
    await first.close()

    second = await aiohttp_client(create_app(interlink_settings(a, b)))
    sync = await (await open_watch(second)).next()
    assert [(p.name, p.sidecar) for p in sync.pods or []] == [("web", "alpha")]
    got = await second.get("/v1/pods/default/web", headers=AUTH)
    assert got.status == 200


async def test_with_a_sidecar_down_the_first_sync_waits_then_says_what_it_knows(
    aiohttp_client: Any, fakes: tuple[FakeSidecar, FakeSidecar]
) -> None:
    a, b = fakes
    a.add_pod("default", "here", "u-here")
    b.add_pod("default", "there", "u-there")
    await b.stop()
    settings = interlink_settings(a, b, watch={"initial_sync_seconds": 0.5})
    client = await aiohttp_client(create_app(settings))
    loop = asyncio.get_running_loop()
    started = loop.time()
    watch = await open_watch(client)
    sync = await watch.next()
    assert [p.name for p in sync.pods or []] == ["here"]
    assert loop.time() - started >= 0.4  # it waited for beta's SYNC before giving up on it
    await b.start()
    event = await watch.until("STATUS", "there")
    assert event.pod is not None and event.pod.sidecar == "beta"


def _stalled_watch(port: int) -> socket.socket:
    """A watch client that sends its request and never reads (a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /v1/watch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\r\n".encode())
    return sock


async def test_a_stalled_watch_client_is_dropped_without_slowing_the_others(
    aiohttp_client: Any, fakes: tuple[FakeSidecar, FakeSidecar]
) -> None:
    a, _ = fakes
    settings = interlink_settings(a, watch={"client_queue": 4, "heartbeat_seconds": 30})
    client = await aiohttp_client(create_app(settings), server_kwargs={"handler_cancellation": True})
    hub = client.app[HUB]
    good = await open_watch(client)
    await good.next()
    stalled = _stalled_watch(client.port)
    await wait_for(lambda: len(hub) == 2, what="both watch clients subscribed")

    big = "x" * 200_000  # each event ~200 kB: the stalled client's socket fills after a few
    a.add_pod("default", "busy", "u-busy")
    await good.until("STATUS", "busy")
    for i in range(60):
        a.set_phase("default", "busy", "Running", message=f"{i} {big}")
        event = await good.until("STATUS", "busy")
        assert event.pod is not None and (event.pod.message or "").startswith(f"{i} ")
    # The good client got all 60 in order, one at a time; the stalled one was cut off.
    assert hub.dropped_total == 1 and len(hub) == 1
    stalled.setblocking(False)
    received = b""
    loop = asyncio.get_running_loop()
    while True:
        chunk = await loop.sock_recv(stalled, 1 << 20)
        if not chunk:
            break  # interlink closed it: the client will reconnect and resync
        received += chunk
    stalled.close()
    assert len(received) < 60 * len(big)
