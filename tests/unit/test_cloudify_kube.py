"""cloudify's API client against a small real HTTP server that plays the API server (the one
boundary faked here; the e2e tests use the real one): error vocabulary, list-then-watch with
relists after 410, and the port-forward channel protocol."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cloudify.kube import Kube, KubeConfig
from cloudify.portforward import PodForwarder
from kod import errors


def status(code: int, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "status": "Failure", "message": message, "code": code}, status=code)


class FakeApi:
    """Pods in one namespace; a watch that serves queued events, then 410 once, then ends."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.rv = 1
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.gone_once = False
        self.lists = 0
        self.unavailable = 0  # answer this many lists with 503 first

    def pod(self, name: str, phase: str) -> dict[str, Any]:
        self.rv += 1
        return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": str(self.rv)}, "status": {"phase": phase}}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/ns/pods", self.list_or_watch)
        app.router.add_get("/api/v1/namespaces/ns/pods/{name}", self.get)
        app.router.add_post("/api/v1/namespaces/ns/pods", self.create)
        app.router.add_get("/api/v1/namespaces/ns/pods/{name}/portforward", self.portforward)
        app.router.add_get("/api/v1/namespaces/ns/pods/{name}/exec", self.exec)
        return app

    async def exec(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        command = request.query.getall("command")
        # stdout (channel 1) in pieces that split a line; stderr (2) is not for the caller.
        await ws.send_bytes(b"\x01" + " ".join(command).encode() + b"\nsec")
        await ws.send_bytes(b"\x02noise\n")
        await ws.send_bytes(b"\x01ond line\n")
        await ws.close()
        return ws

    async def get(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "forbidden":
            return status(403, 'pods "forbidden" is forbidden: User "x" cannot get resource')
        if name not in self.pods:
            return status(404, f'pods "{name}" not found')
        return web.json_response(self.pods[name])

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["metadata"]["name"]
        if name in self.pods:
            return status(409, f'pods "{name}" already exists')
        if not body.get("spec"):
            return status(422, "Pod is invalid: spec.containers: Required value")
        self.pods[name] = self.pod(name, "Pending")
        return web.json_response(self.pods[name], status=201)

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "1":
            if self.unavailable:
                self.unavailable -= 1
                return status(503, "the API server is starting")
            self.lists += 1
            return web.json_response({"metadata": {"resourceVersion": str(self.rv)}, "items": list(self.pods.values())})
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:
            event = await self.events.get()
            if event is None:
                break
            if event.get("type") == "GONE":
                await resp.write(json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}).encode() + b"\n")
                break
            await resp.write(json.dumps(event).encode() + b"\n")
        return resp

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


@pytest.fixture
async def api(aiohttp_server: Any) -> Any:
    fake = FakeApi()
    server = await aiohttp_server(fake.app())
    kube = Kube(KubeConfig(server=str(server.make_url("")).rstrip("/"), context="test", token="t"))
    yield fake, kube
    await kube.close()


async def test_errors_come_back_as_the_vocabulary(api: Any) -> None:
    fake, kube = api
    with pytest.raises(errors.NotFound, match='pods "x" not found'):
        await kube.get("/api/v1/namespaces/ns/pods/x")
    with pytest.raises(errors.Forbidden) as exc:
        await kube.get("/api/v1/namespaces/ns/pods/forbidden")
    assert exc.value.hint
    await kube.create("/api/v1/namespaces/ns/pods", {"metadata": {"name": "a"}, "spec": {"c": 1}})
    with pytest.raises(errors.Conflict):
        await kube.create("/api/v1/namespaces/ns/pods", {"metadata": {"name": "a"}, "spec": {"c": 1}})
    with pytest.raises(errors.InvalidInput, match="spec.containers"):
        await kube.create("/api/v1/namespaces/ns/pods", {"metadata": {"name": "b"}})
    bad = Kube(KubeConfig(server="http://127.0.0.1:9", context="none"))
    with pytest.raises(errors.Unavailable, match="cannot reach the Kubernetes API"):
        await bad.get("/api/v1/namespaces/ns/pods")
    await bad.close()


async def test_watch_lists_first_and_relists_after_410(api: Any) -> None:
    fake, kube = api
    fake.pods["a"] = fake.pod("a", "Pending")
    seen: list[tuple[str, str, str]] = []

    async def consume() -> None:
        async for kind, pod in kube.watch("/api/v1/namespaces/ns/pods"):
            seen.append((kind, pod["metadata"]["name"], pod["status"]["phase"]))
            if len(seen) == 4:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    fake.pods["a"] = fake.pod("a", "Running")
    await fake.events.put({"type": "MODIFIED", "object": fake.pods["a"]})
    # The watch breaks with 410; meanwhile pod a was deleted and b created: the relist shows both.
    del fake.pods["a"]
    fake.pods["b"] = fake.pod("b", "Pending")
    await fake.events.put({"type": "GONE"})
    await asyncio.wait_for(task, 5)
    assert seen == [("ADDED", "a", "Pending"), ("MODIFIED", "a", "Running"), ("ADDED", "b", "Pending"), ("DELETED", "a", "Running")]
    assert fake.lists == 2


async def test_exec_yields_the_commands_output_lines(api: Any) -> None:
    _, kube = api
    lines = [line async for line in kube.exec_lines("ns", "app", "app", ["sh", "-c", "echo hi"])]
    assert lines == ["sh -c echo hi", "second line"]


async def test_watch_waits_out_an_api_server_that_does_not_answer(api: Any) -> None:
    fake, kube = api
    fake.pods["a"] = fake.pod("a", "Running")
    fake.unavailable = 2
    stream = kube.watch("/api/v1/namespaces/ns/pods")
    kind, pod = await asyncio.wait_for(stream.__anext__(), 10)
    assert (kind, pod["metadata"]["name"]) == ("ADDED", "a")
    await stream.aclose()


async def test_port_forward_carries_bytes_and_reports_a_closed_port(api: Any) -> None:
    fake, kube = api
    fwd = PodForwarder(kube, "ns", 5900)
    port = await fwd.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hello")  # sent before the pod is known: held until it is
    await writer.drain()
    await asyncio.sleep(0.05)
    fwd.set_pod("app")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"HELLO"
    writer.close()
    await fwd.close()

    closed = PodForwarder(kube, "ns", 2222)
    port = await closed.start()
    closed.set_pod("closed")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the viewer sees a closed connection and retries
    writer.close()
    await closed.close()
