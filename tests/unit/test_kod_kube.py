"""The project's one Kubernetes client (`kod.kube`, `kod.kube_watch`, `kod.kube_channels`) against
a small real HTTP server on port 0 that answers like the API server (the one boundary faked here;
the e2e tests of vk_bridge and cloudify use the real one): retries only where they belong,
Retry-After honoured, the error table, list-then-watch that resumes from the last
resourceVersion and lists again only after 410, lines of any size, exec and port-forward."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from cloudify.portforward import PodForwarder
from kod import errors
from kod.kube import KubeClient, resource_of
from kod.kube_channels import exec_lines
from kod.kube_config import Connection
from kod.kube_errors import Expired
from kod.kube_watch import ObjectCache, WatchEvent, list_and_watch, watch_changes

#: Bound of every wait in this module: a hang fails the test instead of stalling the suite.
WAIT = 10.0
BIG = 2 * 2**20  # 2 MiB: far beyond aiohttp's 128 KiB line limit


def status(code: int, message: str = "boom", **headers: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "message": message}
    return web.json_response(body, status=code, headers=headers)


def pod(name: str, rv: int, phase: str = "Pending", **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": str(rv), **extra},
            "status": {"phase": phase}}


class FakeApiServer:
    """What the tests script: answers of /api/v1/flaky, the lists (`lists`, one per list
    request, the last repeats) and what each watch request does (`watch_scripts`: events, then
    "end" (the server's timeout), "drop" (the connection breaks), "gone" (an ERROR event with
    410), "gone-answer" (the request answered 410), "silent" or "hang" (nothing more))."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.arrivals: list[float] = []
        self.flaky: list[web.Response] = []
        self.lists: list[tuple[int, list[dict[str, Any]]]] = [(10, [pod("a", 5)])]
        self.watch_scripts: list[tuple[list[dict[str, Any]], str]] = []
        self.headers: list[dict[str, str]] = []
        #: The Authorization header of each list/watch request of /api/v1/pods.
        self.pod_auth: list[str] = []
        app = web.Application()
        app.router.add_get("/api/v1/pods", self.pods)
        app.router.add_get("/api/v1/flaky", self.flaky_get)
        app.router.add_route("*", "/api/v1/status/{code}", self.fixed)
        app.router.add_delete("/api/v1/namespaces/ns/pods/{name}", self.delete)
        app.router.add_get("/api/v1/namespaces/ns/pods/{name}/log", self.log)
        app.router.add_get("/api/v1/namespaces/ns/pods/{name}/exec", self.exec)
        app.router.add_get("/api/v1/namespaces/ns/pods/{name}/portforward", self.portforward)
        self.app = app

    async def flaky_get(self, request: web.Request) -> web.Response:
        self.calls.append(("flaky", dict(request.query)))
        self.arrivals.append(asyncio.get_running_loop().time())
        self.headers.append(dict(request.headers))
        if self.flaky:
            return self.flaky.pop(0)
        return web.json_response({"ok": True})

    async def fixed(self, request: web.Request) -> web.Response:
        self.calls.append(("fixed", dict(request.query)))
        return status(int(request.match_info["code"]), f"answer {request.match_info['code']}")

    async def delete(self, request: web.Request) -> web.Response:
        self.calls.append(("delete", await request.json()))
        if request.match_info["name"] == "gone":
            return status(404, 'pods "gone" not found')
        return web.json_response(pod(request.match_info["name"], 99))

    async def pods(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        self.calls.append(("watch" if q.get("watch") else "list", q))
        self.pod_auth.append(request.headers.get("Authorization", ""))
        if not q.get("watch"):
            rv, items = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
            if rv < 0:
                return status(-rv, "scripted list failure")
            return web.json_response({"kind": "PodList", "metadata": {"resourceVersion": str(rv)}, "items": items})
        events, ending = self.watch_scripts.pop(0) if self.watch_scripts else ([], "hang")
        if ending == "gone-answer":
            return status(410, "too old resource version")
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        for ev in events:
            await resp.write(json.dumps(ev).encode() + b"\n")
        if ending == "gone":
            await resp.write(json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}).encode() + b"\n")
        elif ending == "drop":
            assert request.transport is not None
            request.transport.close()
            return resp
        elif ending in ("hang", "silent"):
            await asyncio.sleep(60)
        await resp.write_eof()
        return resp

    async def log(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        # A line far over 128 KiB, an empty line, then a last line without a newline.
        for piece in (b"first\n", b"x" * BIG + b"\n", b"\n", b"last, no newline"):
            await resp.write(piece)
        await resp.write_eof()
        return resp

    async def exec(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        command = request.query.getall("command")
        # stdout (channel 1) in pieces that split a line; stderr (2) is not for the caller.
        await ws.send_bytes(b"\x01" + " ".join(command).encode() + b"\nsec")
        await ws.send_bytes(b"\x02noise\n")
        await ws.send_bytes(b"\x01ond line\n")
        await ws.send_bytes(b"\x03" + json.dumps({"status": "Success"}).encode())
        await ws.close()
        return ws

    async def portforward(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        port = int(request.query["ports"])
        # Like the kubelet: each channel opens with the port number (little endian).
        await ws.send_bytes(b"\x00" + port.to_bytes(2, "little"))
        await ws.send_bytes(b"\x01" + port.to_bytes(2, "little"))
        if request.match_info["name"] == "closed":
            await ws.send_bytes(b"\x01" + b"connection refused")
            await ws.close()
            return ws
        async for msg in ws:  # an echo server behind the "pod port", upper-casing
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data[0] == 0:
                await ws.send_bytes(b"\x00" + msg.data[1:].upper())
        return ws

    def kinds(self) -> list[tuple[str, str | None]]:
        return [(kind, q.get("resourceVersion")) for kind, q in self.calls if kind in ("list", "watch")]


@pytest.fixture
async def api(aiohttp_server: Callable[..., Any]) -> AsyncIterator[tuple[FakeApiServer, KubeClient]]:
    fake = FakeApiServer()
    server = await aiohttp_server(fake.app)
    conn = Connection(host=str(server.make_url("")).rstrip("/"), authorization=lambda: "Bearer t")
    client = KubeClient(conn, backoff=(0.01, 0.01, 0.01), user_agent="kod-test")
    yield fake, client
    await client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- requests: retries and errors ---------------------------------------------------------------


async def test_a_swapped_connection_serves_at_once_and_moves_open_watches_after_the_drain(
    api: tuple[FakeApiServer, KubeClient],
) -> None:
    fake, client = api
    fake.watch_scripts = [([], "hang"), ([], "hang")]  # a watch that stays open on the old credentials
    events: list[str] = []

    async def follow() -> None:
        async for event in list_and_watch(client, "/api/v1/pods", backoff=(0.05,)):
            events.append(event.type)

    task = asyncio.create_task(follow())
    try:
        async with asyncio.timeout(WAIT):
            while fake.kinds() != [("list", None), ("watch", "10")]:
                await asyncio.sleep(0.01)
        client.swap_connection(Connection(host=client.conn.host, authorization=lambda: "Bearer rotated"), drain_seconds=0.3)
        await asyncio.wait_for(client.get("/api/v1/flaky"), WAIT)
        assert fake.headers[-1]["Authorization"] == "Bearer rotated"  # new requests: at once
        assert fake.pod_auth == ["Bearer t", "Bearer t"]               # the open watch: still the old one
        async with asyncio.timeout(WAIT):
            while len(fake.pod_auth) < 3:
                await asyncio.sleep(0.01)
        # After the drain the old connection was closed; the watch resumed from its
        # resourceVersion (no new list), on the new credentials.
        assert fake.pod_auth[2] == "Bearer rotated" and fake.kinds()[2] == ("watch", "10")
        assert events == ["SYNC"] and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)



async def test_server_errors_are_retried_then_succeed_and_each_retry_is_logged(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    fake.flaky = [status(503, "etcd is sad"), status(500, "etcd is still sad")]
    with structlog.testing.capture_logs() as logs:
        assert await asyncio.wait_for(client.get("/api/v1/flaky"), WAIT) == {"ok": True}
    assert len(fake.calls) == 3
    assert [e["attempt"] for e in logs if e["event"] == "API call failed, retrying"] == ["1/4", "2/4"]
    assert fake.headers[0]["Authorization"] == "Bearer t" and fake.headers[0]["User-Agent"] == "kod-test"
    assert client.stats["GET flaky"] == 3  # each attempt counts (the idle-cost benchmark reads these)


@pytest.mark.parametrize("code", [429, 503])
async def test_retry_after_is_honoured(api: tuple[FakeApiServer, KubeClient], code: int) -> None:
    fake, client = api
    fake.flaky = [status(code, "slow down", **{"Retry-After": "0.3"})]
    await asyncio.wait_for(client.get("/api/v1/flaky"), WAIT)
    assert len(fake.arrivals) == 2
    assert fake.arrivals[1] - fake.arrivals[0] >= 0.29  # the server's 0.3 s, not the client's 0.01 s backoff


async def test_gives_up_after_the_backoff_is_spent(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    fake.flaky = [status(503, "etcd is sad") for _ in range(10)]
    with pytest.raises(errors.Unavailable, match="GET /api/v1/flaky: etcd is sad"):
        await asyncio.wait_for(client.get("/api/v1/flaky"), WAIT)
    assert len(fake.calls) == 4  # one try + three retries


async def test_a_request_without_retry_is_sent_once(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    fake.flaky = [status(503, "etcd is sad")]
    with pytest.raises(errors.Unavailable):
        await asyncio.wait_for(client.request("GET", "/api/v1/flaky", retry=False), WAIT)
    assert len(fake.calls) == 1


#: The error table of kod.kube_errors: status -> the vocabulary's class, and whether it is retried.
ERROR_TABLE = [
    (400, errors.InvalidInput, False), (401, errors.Unauthorized, False), (403, errors.Forbidden, False),
    (404, errors.NotFound, False), (405, errors.InvalidInput, False), (409, errors.Conflict, False),
    (410, Expired, False), (413, errors.InvalidInput, False), (415, errors.InvalidInput, False),
    (422, errors.InvalidInput, False), (429, errors.Unavailable, True), (500, errors.Unavailable, True),
    (501, errors.Unavailable, False), (502, errors.Unavailable, True), (503, errors.Unavailable, True),
    (504, errors.Unavailable, True),
]


@pytest.mark.parametrize(("code", "exc", "retried"), ERROR_TABLE)
async def test_answers_map_to_the_vocabulary_and_only_unavailability_is_retried(
    api: tuple[FakeApiServer, KubeClient], code: int, exc: type[errors.KodError], retried: bool,
) -> None:
    fake, client = api
    with pytest.raises(exc, match=f"POST /api/v1/status/{code}: answer {code}") as caught:
        await asyncio.wait_for(client.create(f"/api/v1/status/{code}", {"kind": "Pod"}), WAIT)
    assert type(caught.value) is exc  # exactly: an Expired is no Conflict, a 5xx no Internal
    assert len(fake.calls) == (4 if retried else 1)
    if code in (401, 403):
        assert caught.value.hint  # what to do about it, e.g. `kubectl auth can-i`


async def test_an_unreachable_api_server_is_unavailable_with_a_hint() -> None:
    client = KubeClient(Connection(host=f"http://127.0.0.1:{free_port()}"), backoff=(0.01,))
    try:
        with pytest.raises(errors.Unavailable, match="cannot reach the Kubernetes API") as caught:
            await asyncio.wait_for(client.get("/version"), WAIT)
        assert "localenv status" in str(caught.value.hint)
        assert client.stats["GET version"] == 2
    finally:
        await client.close()


async def test_delete_sends_background_propagation_and_may_find_the_object_gone(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    await asyncio.wait_for(client.delete("/api/v1/namespaces/ns/pods/p", grace_seconds=0), WAIT)
    assert fake.calls[-1] == ("delete", {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
                                         "gracePeriodSeconds": 0})
    assert await asyncio.wait_for(client.delete("/api/v1/namespaces/ns/pods/gone", missing_ok=True), WAIT) is None
    with pytest.raises(errors.NotFound, match='pods "gone" not found'):
        await asyncio.wait_for(client.delete("/api/v1/namespaces/ns/pods/gone"), WAIT)


# -- list and watch -----------------------------------------------------------------------------


async def _take(gen: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async for ev in gen:
        out.append(ev)
        if len(out) == n:
            break
    await gen.aclose()  # type: ignore[attr-defined]
    return out


async def test_watch_resumes_from_the_last_version_and_relists_only_on_gone(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    fake.watch_scripts = [
        ([{"type": "ADDED", "object": pod("b", 11)}], "end"),  # server timeout: re-watch from 11
        ([{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}], "drop"),  # broken: resume from 15
        ([{"type": "MODIFIED", "object": pod("b", 16)}], "gone"),  # 410 as an ERROR event: list again
        ([], "gone-answer"),  # 410 as the answer to the watch request: list again
        ([{"type": "DELETED", "object": pod("a", 21)}], "hang"),
    ]
    gen = list_and_watch(client, "/api/v1/pods", params={"fieldSelector": "spec.nodeName=n"}, backoff=(0.01,))
    events = await asyncio.wait_for(_take(gen, 6), WAIT)
    assert [e.type for e in events] == ["SYNC", "ADDED", "MODIFIED", "SYNC", "SYNC", "DELETED"]  # no BOOKMARK
    assert [o["metadata"]["name"] for o in events[0].objects] == ["a"]
    assert fake.kinds() == [("list", None), ("watch", "10"), ("watch", "11"), ("watch", "15"),
                            ("list", None), ("watch", "10"), ("list", None), ("watch", "10")]
    assert all(q.get("fieldSelector") == "spec.nodeName=n" for _, q in fake.calls)
    watches = [q for kind, q in fake.calls if kind == "watch"]
    assert all(q["allowWatchBookmarks"] == "true" and 300 <= int(q["timeoutSeconds"]) <= 600 for q in watches)


async def test_a_silent_watch_counts_as_broken_and_resumes_where_it_was(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    fake.watch_scripts = [
        ([{"type": "MODIFIED", "object": pod("a", 12)}], "silent"),  # then nothing: the stream is dead
        ([{"type": "MODIFIED", "object": pod("a", 13)}], "hang"),
    ]
    gen = list_and_watch(client, "/api/v1/pods", inactivity_seconds=0.3, backoff=(0.01,))
    events = await asyncio.wait_for(_take(gen, 3), WAIT)
    assert [(e.type, (e.object or {}).get("metadata", {}).get("resourceVersion")) for e in events] == [
        ("SYNC", None), ("MODIFIED", "12"), ("MODIFIED", "13")]
    assert fake.kinds() == [("list", None), ("watch", "10"), ("watch", "12")]  # resumed, not relisted


async def test_a_watch_event_larger_than_a_mebibyte_arrives_whole(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    big = pod("big", 11, annotations={"kod.io/blob": "y" * BIG})
    fake.watch_scripts = [([{"type": "ADDED", "object": big}, {"type": "MODIFIED", "object": pod("a", 12)}], "hang")]
    events = await asyncio.wait_for(_take(list_and_watch(client, "/api/v1/pods"), 3), WAIT)
    assert [e.type for e in events] == ["SYNC", "ADDED", "MODIFIED"]
    assert events[1].object == big  # all 2 MiB of it, and the next event after it
    assert fake.kinds() == [("list", None), ("watch", "10")]  # no error, no reconnect


async def test_refusals_are_retried_by_default_and_raised_on_request(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    # A daemon outlives an RBAC fix: 403, then the list works.
    fake.lists = [(-403, []), (10, [pod("a", 5)])]
    events = await asyncio.wait_for(_take(list_and_watch(client, "/api/v1/pods", backoff=(0.01,)), 1), WAIT)
    assert events[0].type == "SYNC" and fake.kinds()[:2] == [("list", None), ("list", None)]
    # A CLI says why at once.
    fake.lists = [(-403, [])]
    with pytest.raises(errors.Forbidden, match="scripted list failure"):
        await asyncio.wait_for(_take(watch_changes(client, "/api/v1/pods", retry_refusals=False), 1), WAIT)


async def test_an_api_server_that_does_not_answer_is_waited_out(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    fake.lists = [(-503, []), (-503, []), (10, [pod("a", 5, "Running")])]
    stream = watch_changes(client, "/api/v1/pods", backoff=(0.01,), retry_refusals=False)
    first = await asyncio.wait_for(stream.__anext__(), WAIT)
    await stream.aclose()  # type: ignore[attr-defined]
    assert (first.type, (first.object or {})["metadata"]["name"]) == ("ADDED", "a")


async def test_changes_only_view_synthesises_deletions_between_lists(api: tuple[FakeApiServer, KubeClient]) -> None:
    fake, client = api
    # The watch breaks with 410; meanwhile pod a was deleted and b created: the relist shows both.
    fake.lists = [(10, [pod("a", 5), pod("c", 6)]), (20, [pod("b", 18), pod("c", 6)])]
    fake.watch_scripts = [([{"type": "MODIFIED", "object": pod("a", 12, "Running")}], "gone")]
    events = await asyncio.wait_for(_take(watch_changes(client, "/api/v1/pods", backoff=(0.01,)), 5), WAIT)
    seen = [(e.type, (e.object or {})["metadata"]["name"], (e.object or {})["status"]["phase"]) for e in events]
    assert seen == [("ADDED", "a", "Pending"), ("ADDED", "c", "Pending"), ("MODIFIED", "a", "Running"),
                    ("ADDED", "b", "Pending"), ("DELETED", "a", "Running")]  # c unchanged: not repeated
    assert fake.kinds() == [("list", None), ("watch", "10"), ("list", None)]


def test_object_cache_folds_events() -> None:
    cache = ObjectCache()
    cache.apply(WatchEvent("SYNC", objects=(pod("a", 1), pod("b", 2))))
    cache.apply(WatchEvent("DELETED", object=pod("a", 3)))
    cache.apply(WatchEvent("ADDED", object=pod("c", 4)))
    assert cache.ready.is_set()
    assert sorted(o["metadata"]["name"] for o in cache.in_namespaces("ns")) == ["b", "c"]
    assert cache.in_namespaces("other") == []


# -- streamed lines, exec, port-forward ---------------------------------------------------------


async def test_log_lines_of_any_size_arrive_whole(api: tuple[FakeApiServer, KubeClient]) -> None:
    _, client = api

    async def read() -> list[str]:
        return [line async for line in client.stream_lines("/api/v1/namespaces/ns/pods/p/log", params={"follow": True})]

    lines = await asyncio.wait_for(read(), WAIT)
    assert [len(line) for line in lines] == [5, BIG, 0, 16]
    assert lines[0] == "first" and lines[-1] == "last, no newline"


async def test_exec_yields_the_commands_output_lines(api: tuple[FakeApiServer, KubeClient]) -> None:
    _, client = api

    async def run() -> list[str]:
        return [line async for line in exec_lines(client, "ns", "app", "app", ["sh", "-c", "echo hi"])]

    assert await asyncio.wait_for(run(), WAIT) == ["sh -c echo hi", "second line"]


async def test_port_forward_carries_bytes_and_reports_a_closed_port(api: tuple[FakeApiServer, KubeClient]) -> None:
    _, client = api
    fwd = PodForwarder(client, "ns", 5900)
    port = await fwd.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hello")  # sent before the pod is known: held until it is
    await writer.drain()
    await asyncio.sleep(0.05)
    fwd.set_pod("app")
    assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"HELLO"
    writer.close()
    await fwd.close()

    closed = PodForwarder(client, "ns", 2222)
    port = await closed.start()
    closed.set_pod("closed")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), WAIT) == b""  # the viewer sees a closed connection and retries
    writer.close()
    await closed.close()


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
    assert resource_of(path) == resource
