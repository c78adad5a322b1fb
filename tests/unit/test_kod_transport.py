"""The one InterLink transport of kod: the client (`kod.http.ApiClient`, `Stream`), the watch hub
(`kod.hub`) and the reconnecting watch loop (`kod.watch_follow`), against small real servers on
free ports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from kod import errors, wire
from kod.http import ApiClient, bearer_auth_middleware, error_middleware, request_id_middleware
from kod.hub import Hub, event_line
from kod.log import request_id_var
from kod.watch_follow import LinkHealth, follow_watch


# --- the client -------------------------------------------------------------------------------


async def test_a_token_from_a_function_is_read_again_after_a_401(aiohttp_server: Callable[..., Any]) -> None:
    app = web.Application(middlewares=[error_middleware, bearer_auth_middleware("new")])

    async def ping(request: web.Request) -> web.Response:
        return web.json_response(wire.NodeInfo().model_dump())

    app.router.add_get("/v1/ping", ping)
    server = await aiohttp_server(app)
    tokens = iter(["old", "new"])
    reads: list[str] = []

    def token() -> str:
        reads.append(value := next(tokens))
        return value

    api = ApiClient(str(server.make_url("")), token, name="sidecar 'x'",
                    on_refused_token=lambda: errors.Unavailable("sidecar 'x' refused our token", hint="fix its token_file"))
    try:
        with pytest.raises(errors.Unavailable, match="refused our token") as refused:
            await api.request("GET", "/v1/ping")
        assert refused.value.hint == "fix its token_file"  # not a 401 passed on to our caller
        assert await api.request("GET", "/v1/ping", model=wire.NodeInfo) is not None
        assert reads == ["old", "new"]
    finally:
        await api.close()


async def test_without_a_mapping_a_401_stays_unauthorized(aiohttp_server: Callable[..., Any]) -> None:
    app = web.Application(middlewares=[error_middleware, bearer_auth_middleware("right")])
    server = await aiohttp_server(app)
    api = ApiClient(str(server.make_url("")), "wrong")
    try:
        with pytest.raises(errors.Unauthorized):
            await api.request("GET", "/v1/ping")
    finally:
        await api.close()


async def test_raw_bytes_are_forwarded_as_they_are_and_the_request_id_travels(aiohttp_server: Callable[..., Any]) -> None:
    seen: list[tuple[bytes, str | None]] = []
    app = web.Application(middlewares=[request_id_middleware, error_middleware])

    async def create(request: web.Request) -> web.Response:
        seen.append((await request.read(), request.headers.get(wire.REQUEST_ID_HEADER)))
        return web.json_response({"namespace": "n", "name": "p", "uid": "u"}, status=201)

    app.router.add_post("/v1/pods", create)
    server = await aiohttp_server(app)
    api = ApiClient(str(server.make_url("")), None)
    raw = b'{"pod": {"unmodelled": [1, 2]}}'
    try:
        token = request_id_var.set("trace-7")
        try:
            status, pod = await api.call("POST", "/v1/pods", wire.PodStatus, data=raw)
        finally:
            request_id_var.reset(token)
        assert (status, pod.uid) == (201, "u")
        assert seen == [(raw, "trace-7")]
    finally:
        await api.close()


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        (web.Response(body=b"not json", content_type="application/json"), "malformed PodStatus"),
        (web.Response(status=502, text="<html>Bad Gateway</html>"), "answered 502: <html>Bad Gateway</html>"),
    ],
    ids=["garbage-200", "proxy-502"],
)
async def test_a_garbled_answer_is_unavailable_naming_the_peer(
    aiohttp_server: Callable[..., Any], answer: web.Response, needle: str
) -> None:
    app = web.Application()

    async def get(request: web.Request) -> web.Response:
        return answer

    app.router.add_get("/v1/pods/n/p", get)
    server = await aiohttp_server(app)
    api = ApiClient(str(server.make_url("")), None, name="sidecar 'x'")
    try:
        with pytest.raises(errors.Unavailable, match=needle) as caught:
            await api.request("GET", "/v1/pods/n/p", model=wire.PodStatus)
        assert "sidecar 'x'" in str(caught.value)
    finally:
        await api.close()


async def test_a_stream_closed_while_read_never_looks_complete(aiohttp_server: Callable[..., Any]) -> None:
    release = asyncio.Event()

    async def quiet(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first\n")
        await release.wait()
        return response

    app = web.Application()
    app.router.add_get("/logs", quiet)
    server = await aiohttp_server(app)
    api = ApiClient(str(server.make_url("")), None)
    try:
        async with api.open("/logs") as stream:
            chunks = stream.chunks()
            assert await anext(chunks) == b"first\n"
            pending = asyncio.ensure_future(anext(chunks))
            await asyncio.sleep(0.05)
            stream.close()  # as interlink does to its upstream log streams at shutdown
            with pytest.raises(errors.Unavailable, match="was closed"):
                await asyncio.wait_for(pending, 5)
    finally:
        release.set()
        await api.close()


async def test_lines_longer_than_aiohttps_limit_and_a_silent_stream(aiohttp_server: Callable[..., Any]) -> None:
    big = b"x" * (512 * 1024)

    async def lines(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(big + b"\n\n" + b"short\n")
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/lines", lines)
    server = await aiohttp_server(app)
    api = ApiClient(str(server.make_url("")), None)
    try:
        got = []
        with pytest.raises(errors.Unavailable, match="stayed silent for 0.3 s"):
            async for line in api.lines("/lines", idle_seconds=0.3):
                got.append(line)
        assert got == [big, b"short"]
    finally:
        await api.close()


# --- the hub ----------------------------------------------------------------------------------


async def test_a_slow_subscriber_is_dropped_and_the_others_get_everything() -> None:
    hub = Hub(queue_size=2)
    dropped: list[str] = []
    events = [wire.WatchEvent(type="DELETED", pod=wire.PodStatus(namespace="n", name=f"p{i}", uid=f"u{i}")) for i in range(3)]
    with hub.subscribe(on_drop=lambda: dropped.append("slow")) as slow, hub.subscribe() as fast:
        got = []
        for event in events:
            hub.publish(event)
            got.append(await asyncio.wait_for(fast.get(), 1))
        assert got == [event_line(e) for e in events]
        assert dropped == ["slow"] and slow.dropped and hub.dropped_total == 1 and len(hub) == 1
        assert await asyncio.wait_for(slow.get(), 1) is None  # its stream ends at once
    assert len(hub) == 0


async def test_close_ends_each_stream_after_what_is_queued() -> None:
    hub = Hub(queue_size=4)
    with hub.subscribe() as sub:
        hub.publish(wire.WatchEvent(type="HEARTBEAT"))
        hub.close()
        assert await sub.get() == b'{"type":"HEARTBEAT"}\n'
        assert await sub.get() is None and not sub.dropped


# --- the reconnecting watch loop --------------------------------------------------------------


async def test_follow_refuses_a_stream_that_does_not_open_with_sync_and_reconnects(
    aiohttp_server: Callable[..., Any],
) -> None:
    connects = 0
    pod = wire.PodStatus(namespace="n", name="p", uid="u")

    async def watch(request: web.Request) -> web.StreamResponse:
        nonlocal connects
        connects += 1
        response = web.StreamResponse(headers={"Content-Type": wire.NDJSON})
        await response.prepare(request)
        if connects == 1:
            await response.write(event_line(wire.WatchEvent(type="STATUS", pod=pod)))
        else:
            await response.write(event_line(wire.WatchEvent(type="SYNC", pods=[pod])))
            await response.write(event_line(wire.WatchEvent(type="DELETED", pod=pod)))
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/v1/watch", watch)
    server = await aiohttp_server(app)
    api = ApiClient(str(server.make_url("")), None)
    received: list[wire.WatchEvent] = []
    up = asyncio.Event()
    health = LinkHealth(event=up)
    task = asyncio.create_task(follow_watch(api, received.append, idle_seconds=5, backoff=(0.01,), health=health))
    try:
        await asyncio.wait_for(up.wait(), 5)
        while len(received) < 2:
            await asyncio.sleep(0.01)
        assert [e.type for e in received] == ["SYNC", "DELETED"]  # the leading STATUS never got through
        assert connects == 2 and health.connected and health.connects == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


async def test_follow_reads_the_token_again_before_each_connection(aiohttp_server: Callable[..., Any]) -> None:
    app = web.Application(middlewares=[error_middleware, bearer_auth_middleware("late")])

    async def watch(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": wire.NDJSON})
        await response.prepare(request)
        await response.write(event_line(wire.WatchEvent(type="SYNC", pods=[])))
        await asyncio.sleep(30)
        return response

    app.router.add_get("/v1/watch", watch)
    server = await aiohttp_server(app)
    current = {"token": "early"}
    api = ApiClient(str(server.make_url("")), lambda: current["token"])
    health = LinkHealth(event=asyncio.Event())
    task = asyncio.create_task(follow_watch(api, lambda e: None, idle_seconds=5, backoff=(0.02,), health=health))
    try:
        for _ in range(500):
            if "wrong bearer token" in (health.error or ""):
                break
            await asyncio.sleep(0.01)
        assert not health.connected and "wrong bearer token" in (health.error or "")
        current["token"] = "late"  # the peer's token file now holds the token it wants
        assert health.event is not None
        await asyncio.wait_for(health.event.wait(), 5)
        assert health.connected and health.error is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()
