"""The async Kubernetes client and the list-then-watch stream, against a small real HTTP server
that answers like the API server: retries only where they belong, Retry-After honoured, re-watch
from the last resourceVersion, a new list only after 410 Gone."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kod import errors
from vk_bridge.kube import Connection, Expired, KubeClient, _resource_of
from vk_bridge.watch import ObjectCache, WatchEvent, list_and_watch


def status(code: int, message: str = "boom") -> web.Response:
    return web.json_response({"kind": "Status", "code": code, "message": message}, status=code)


def pod(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": str(rv)}}


class FakeApiServer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.flaky = 0
        self.retry_after: str | None = None
        #: What each watch request does, in order: a list of events, then "end", "drop" or "gone".
        self.watch_scripts: list[tuple[list[dict[str, Any]], str]] = []
        self.list_rv = 10
        self.items = [pod("a", 5)]
        app = web.Application()
        app.router.add_get("/api/v1/pods", self.pods)
        app.router.add_get("/api/v1/flaky", self.flaky_get)
        app.router.add_get("/api/v1/status/{code}", self.fixed)
        self.app = app

    async def flaky_get(self, request: web.Request) -> web.Response:
        self.calls.append(("flaky", dict(request.query)))
        if self.flaky > 0:
            self.flaky -= 1
            resp = status(503, "etcd is sad")
            if self.retry_after:
                resp.headers["Retry-After"] = self.retry_after
            return resp
        return web.json_response({"ok": True})

    async def fixed(self, request: web.Request) -> web.Response:
        self.calls.append(("fixed", dict(request.query)))
        return status(int(request.match_info["code"]))

    async def pods(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        self.calls.append(("watch" if q.get("watch") else "list", q))
        if not q.get("watch"):
            return web.json_response({"metadata": {"resourceVersion": str(self.list_rv)}, "items": self.items})
        events, ending = self.watch_scripts.pop(0) if self.watch_scripts else ([], "hang")
        resp = web.StreamResponse()
        await resp.prepare(request)
        for ev in events:
            await resp.write(json.dumps(ev).encode() + b"\n")
        if ending == "gone":
            await resp.write(json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}).encode() + b"\n")
        elif ending == "drop":
            assert request.transport is not None
            request.transport.close()
            return resp
        elif ending == "hang":
            await asyncio.sleep(30)
        await resp.write_eof()
        return resp


@pytest.fixture
async def api(aiohttp_server: Callable[..., Any]) -> AsyncIterator[tuple[FakeApiServer, KubeClient]]:
    fake = FakeApiServer()
    server: TestServer = await aiohttp_server(fake.app)
    conn = Connection(host=str(server.make_url("")).rstrip("/"), ssl_context=None, authorization=lambda: "Bearer t")
    client = KubeClient(conn, backoff=(0.01, 0.01, 0.01))
    yield fake, client
    await client.close()


async def test_server_errors_are_retried_then_succeed(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    fake.flaky = 2
    assert await client.get("/api/v1/flaky") == {"ok": True}
    assert len(fake.calls) == 3


async def test_retry_after_is_honoured(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    fake.flaky, fake.retry_after = 1, "0.3"
    t0 = time.monotonic()
    await client.get("/api/v1/flaky")
    assert time.monotonic() - t0 >= 0.3


async def test_gives_up_after_the_backoff_is_spent(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    fake.flaky = 10
    with pytest.raises(errors.Unavailable, match="etcd is sad"):
        await client.get("/api/v1/flaky")
    assert len(fake.calls) == 4  # one try + three retries


@pytest.mark.parametrize(
    ("code", "exc"),
    [(400, errors.InvalidInput), (401, errors.Unauthorized), (403, errors.Forbidden), (404, errors.NotFound),
     (409, errors.Conflict), (410, Expired), (422, errors.InvalidInput)],
)
async def test_client_errors_are_not_retried(api: tuple[FakeApiServer, KubeClient], code: int, exc: type[Exception]) -> None:
    fake, client = api
    with pytest.raises(exc):
        await client.get(f"/api/v1/status/{code}")
    assert len(fake.calls) == 1


async def test_connection_refused_is_unavailable() -> None:
    client = KubeClient(Connection(host="http://127.0.0.1:9", ssl_context=None, authorization=lambda: None), backoff=(0.01,))
    try:
        with pytest.raises(errors.Unavailable, match="cannot reach"):
            await client.get("/version")
    finally:
        await client.close()


async def _take(gen: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    out = []
    async for ev in gen:
        out.append(ev)
        if len(out) == n:
            break
    return out


async def test_watch_resumes_from_the_last_version_and_relists_only_on_gone(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    fake.watch_scripts = [
        ([{"type": "ADDED", "object": pod("b", 11)}], "end"),  # server timeout: re-watch from 11
        ([{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}], "drop"),  # broken: resume from 15
        ([{"type": "MODIFIED", "object": pod("b", 16)}], "gone"),  # 410: list again
        ([{"type": "DELETED", "object": pod("a", 21)}], "hang"),
    ]
    gen = list_and_watch(client, "/api/v1/pods", params={"fieldSelector": "spec.nodeName=n"}, backoff=(0.01,))
    events = await asyncio.wait_for(_take(gen, 5), 10)
    await gen.aclose()  # type: ignore[attr-defined]
    assert [e.type for e in events] == ["SYNC", "ADDED", "MODIFIED", "SYNC", "DELETED"]
    assert [o["metadata"]["name"] for o in events[0].objects] == ["a"]
    kinds = [(kind, q.get("resourceVersion")) for kind, q in fake.calls]
    assert kinds == [("list", None), ("watch", "10"), ("watch", "11"), ("watch", "15"), ("list", None), ("watch", "10")]
    assert all(q.get("fieldSelector") == "spec.nodeName=n" for _, q in fake.calls)
    assert all(q.get("allowWatchBookmarks") == "true" for kind, q in fake.calls if kind == "watch")


def test_object_cache_folds_events() -> None:
    cache = ObjectCache()
    cache.apply(WatchEvent("SYNC", objects=(pod("a", 1), pod("b", 2))))
    cache.apply(WatchEvent("DELETED", object=pod("a", 3)))
    cache.apply(WatchEvent("ADDED", object=pod("c", 4)))
    assert cache.ready.is_set()
    assert sorted(o["metadata"]["name"] for o in cache.in_namespaces("ns")) == ["b", "c"]


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/api/v1/namespaces/x/pods/y/status", "pods/status"),
        ("/api/v1/nodes/n", "nodes"),
        ("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n", "leases"),
        ("/api/v1/pods", "pods"),
        ("/version", "version"),
    ],
)
def test_request_statistics_are_per_resource(path: str, resource: str) -> None:
    assert _resource_of(path) == resource
