"""The sidecar's HTTP surface through `aiohttp_client`, against a small fake Docker engine (a real
aiohttp server on a unix socket that knows an empty engine and records every call): auth, bad
input, unknown pods, policy refusals that create nothing, ping, health and the watch stream.
Everything that needs containers is tested against the real engine in tests/e2e."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from kod.tokens import server_token
from sidecars.docker.app import create_app
from sidecars.docker.settings import DockerSidecarSettings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeEngine:
    """An empty Docker engine: version, info, empty lists, an idle event stream, no images."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closing = asyncio.Event()
        #: End the first event stream at once (an engine restart, as the sidecar sees it).
        self.drop_first_stream = False
        self.streams = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/v1.41")
        self.calls.append(f"{request.method} {path}")
        if path == "/version":
            return web.json_response({"Version": "20.10.0-fake", "ApiVersion": "1.41"})
        if path == "/info":
            return web.json_response({"NCPU": 4, "MemTotal": 8 * 2**30})
        if path == "/containers/json":
            return web.json_response([])
        if path == "/volumes":
            return web.json_response({"Volumes": []})
        if path == "/events":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            self.streams += 1
            if self.drop_first_stream and self.streams == 1:
                return resp
            await self.closing.wait()  # idle until the test ends
            return resp
        if path.startswith("/images/"):
            return web.json_response({"message": "No such image"}, status=404)
        return web.json_response({"message": f"fake engine: unexpected {request.method} {path}"}, status=500)

    def mutating_calls(self) -> list[str]:
        return [c for c in self.calls if not c.startswith("GET ")]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[FakeEngine, str]]:
    fake = FakeEngine()
    runner = web.AppRunner(fake.app)
    await runner.setup()
    sock = tmp_path / "docker.sock"
    site = web.UnixSite(runner, str(sock))
    await site.start()
    yield fake, f"unix://{sock}"
    fake.closing.set()
    await runner.cleanup()


def settings_for(url: str, **extra: Any) -> DockerSidecarSettings:
    # A fake engine has no host file system: staging off.
    values: dict[str, Any] = {"ready_timeout_seconds": 5, "heartbeat_seconds": 0.2, "host_access": {"mode": "off"}, **extra}
    return DockerSidecarSettings(name="unit", token=SecretStr(TOKEN), docker_url=url, **values)


@pytest.fixture
async def client(engine, aiohttp_client):
    fake, url = engine
    return await aiohttp_client(create_app(settings_for(url)))


POD = {"metadata": {"name": "p", "namespace": "default", "uid": "u-1"},
       "spec": {"containers": [{"name": "c", "image": "kod/testbox:0.1.0"}]}}

ROUTES = [
    ("GET", "/v1/ping"),
    ("GET", "/v1/pods"),
    ("POST", "/v1/pods"),
    ("GET", "/v1/pods/default/p"),
    ("DELETE", "/v1/pods/default/p"),
    ("GET", "/v1/pods/default/p/containers/c/logs"),
    ("GET", "/v1/watch"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
async def test_every_route_needs_the_token(client, method, path, headers) -> None:
    resp = await client.request(method, path, headers=headers, json={"pod": POD})
    assert resp.status == 401
    assert (await resp.json())["error"] == "Unauthorized"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "needle"),
    [
        ("POST", "/v1/pods", {"data": b"{not json"}, "Invalid JSON"),
        ("POST", "/v1/pods", {"data": b""}, "empty"),
        ("POST", "/v1/pods", {"json": {"pod": {"metadata": {}}}}, "pod.metadata"),
        ("POST", "/v1/pods", {"json": {"pod": POD, "surprise": 1}}, "surprise"),
        ("POST", "/v1/pods", {"json": {"pod": {**POD, "spec": {"containers": []}}}}, "containers"),
        ("POST", "/v1/pods", {"json": {"pod": {**POD, "spec": {"containers": [{"name": "c", "image": "i"}],
                                                            "restartPolicy": "Sometimes"}}}}, "restartPolicy"),
        ("POST", "/v1/pods", {"json": {"pod": {**POD, "spec": {"containers": [
            {"name": "c", "image": "i", "resources": {"limits": {"memory": "a lot"}}}]}}}}, "quantity"),
        ("DELETE", "/v1/pods/default/p?gracePeriodSeconds=-1", {}, "gracePeriodSeconds"),
        ("DELETE", "/v1/pods/default/p?gracePeriodSeconds=soon", {}, "gracePeriodSeconds"),
        ("DELETE", "/v1/pods/default/p?force=true", {}, "force"),
        ("GET", "/v1/pods/default/p/containers/c/logs?tailLines=-3", {}, "tailLines"),
        ("GET", "/v1/pods/default/p/containers/c/logs?follow=maybe", {}, "follow"),
        ("GET", "/v1/pods/default/p/containers/c/logs?sinceTime=yesterday", {}, "sinceTime"),
    ],
)
async def test_bad_input_is_400_with_a_message(client, method, path, kwargs, needle) -> None:
    resp = await client.request(method, path, headers=AUTH, **kwargs)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "InvalidInput" and needle in body["message"], body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/pods/default/nope"),
        ("DELETE", "/v1/pods/default/nope"),
        ("DELETE", "/v1/pods/default/nope?uid=abc&gracePeriodSeconds=0"),
        ("GET", "/v1/pods/default/nope/containers/c/logs"),
        ("GET", "/v1/nothing-here"),
    ],
)
async def test_unknown_pods_are_404(client, method, path) -> None:
    resp = await client.request(method, path, headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"] == "NotFound"


@pytest.mark.parametrize(
    ("spec_patch", "field"),
    [
        ({"containers": [{"name": "c", "image": "i", "securityContext": {"privileged": True}}]},
         "spec.containers[0].securityContext.privileged"),
        ({"containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "etc", "mountPath": "/host"}]}],
          "volumes": [{"name": "etc", "hostPath": {"path": "/etc"}}]}, "spec.volumes[0].hostPath.path"),
        ({"hostNetwork": True}, "spec.hostNetwork"),
    ],
)
async def test_policy_refusal_is_403_naming_the_field_and_creates_nothing(client, engine, spec_patch, field) -> None:
    fake, _ = engine
    pod = {**POD, "spec": {**POD["spec"], **spec_patch}}
    resp = await client.post("/v1/pods", headers=AUTH, json={"pod": pod})
    assert resp.status == 403
    body = await resp.json()
    assert body["error"] == "Forbidden" and field in body["message"]
    assert fake.mutating_calls() == []


async def test_ping_reports_capacity_from_the_engine_and_health(client) -> None:
    resp = await client.get("/v1/ping", headers=AUTH)
    assert resp.status == 200
    info = await resp.json()
    assert info["capacity"] == {"cpu": "4", "memory": "8Gi", "pods": "110"}
    assert info["sidecars"] == [{"name": "unit", "ok": True}]
    health = await client.get("/healthz")
    assert health.status == 200


async def test_capacity_from_settings_wins(engine, aiohttp_client) -> None:
    _, url = engine
    from sidecars.docker.settings import CapacitySettings

    app = create_app(settings_for(url, capacity=CapacitySettings(cpu="2", memory="4Gi", pods=20, extra={"nvidia.com/gpu": "1"})))
    client = await aiohttp_client(app)
    info = await (await client.get("/v1/ping", headers=AUTH)).json()
    assert info["capacity"] == {"cpu": "2", "memory": "4Gi", "pods": "20", "nvidia.com/gpu": "1"}


async def test_watch_opens_with_sync_then_heartbeats(client) -> None:
    resp = await client.get("/v1/watch", headers=AUTH)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
    first = json.loads(await resp.content.readline())
    assert first == {"type": "SYNC", "pods": []}
    second = json.loads(await asyncio.wait_for(resp.content.readline(), 5))
    assert second == {"type": "HEARTBEAT"}
    resp.close()


async def test_request_id_is_echoed(client) -> None:
    resp = await client.get("/v1/pods", headers={**AUTH, "X-Request-Id": "abc123"})
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "abc123"
    assert await resp.json() == {"items": []}


async def test_unreachable_engine_gives_503_and_an_unhealthy_ping(aiohttp_client, tmp_path) -> None:
    app = create_app(settings_for(f"unix://{tmp_path}/nothing.sock", ready_timeout_seconds=0.3))
    client = await aiohttp_client(app)
    resp = await client.get("/v1/pods/default/p", headers=AUTH)
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == "Unavailable" and "Docker engine" in body["message"]
    info = await (await client.get("/v1/ping", headers=AUTH)).json()
    assert info["sidecars"][0]["ok"] is False and info["sidecars"][0]["message"]
    assert (await client.get("/healthz")).status == 503


async def test_a_lost_event_stream_is_reopened_and_everything_listed_again(engine, aiohttp_client) -> None:
    fake, url = engine
    fake.drop_first_stream = True
    client = await aiohttp_client(create_app(settings_for(url, events_backoff_seconds=(0.05,))))
    assert (await client.get("/v1/pods", headers=AUTH)).status == 200
    for _ in range(100):
        if fake.streams >= 2 and fake.calls.count("GET /containers/json") >= 2:
            break
        await asyncio.sleep(0.05)
    assert fake.streams >= 2 and fake.calls.count("GET /containers/json") >= 2
    assert (await client.get("/healthz")).status == 200


def test_token_file_is_created_random_and_private(tmp_path) -> None:
    path = tmp_path / "kod" / "docker-sidecar.token"
    s = DockerSidecarSettings(token_file=path)
    token = server_token(s.token, s.token_file, create=s.create_token)
    assert len(token) >= 32 and path.read_text().strip() == token
    assert path.stat().st_mode & 0o777 == 0o600
    assert server_token(s.token, s.token_file, create=s.create_token) == token  # read back, not replaced
    other = DockerSidecarSettings(token_file=tmp_path / "other.token")
    assert server_token(other.token, other.token_file, create=other.create_token) != token
