"""The shared core: error mapping over real HTTP, settings precedence, wire validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from kod import errors, wire
from kod.http import ApiClient, bearer_auth_middleware, error_middleware, read_model, request_id_middleware
from kod.settings import load_settings
from pydantic import BaseModel, Field


def _app() -> web.Application:
    app = web.Application(middlewares=[request_id_middleware, error_middleware, bearer_auth_middleware("s3cret")])

    async def create(request: web.Request) -> web.Response:
        req = await read_model(request, wire.PodCreateRequest)
        if req.pod.metadata.name == "missing":
            raise errors.NotFound("pod default/missing not found")
        return web.json_response({"ok": True}, status=201)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    app.router.add_post("/v1/pods", create)
    app.router.add_get("/boom", boom)
    return app


POD = {"metadata": {"name": "p", "uid": "u1"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, POD, 401, "Unauthorized"),
        ({"Authorization": "Bearer wrong"}, POD, 401, "Unauthorized"),
        ({"Authorization": "Bearer s3cret"}, b"{not json", 400, "InvalidInput"),
        ({"Authorization": "Bearer s3cret"}, {"pod": {"metadata": {}}}, 400, "InvalidInput"),
        ({"Authorization": "Bearer s3cret"}, b"", 400, "InvalidInput"),
        ({"Authorization": "Bearer s3cret"}, {"pod": {**POD, "metadata": {"name": "missing", "uid": "u"}}}, 404, "NotFound"),
        ({"Authorization": "Bearer s3cret"}, {"pod": POD}, 201, None),
    ],
)
async def test_errors_map_to_status_codes_with_a_message(aiohttp_client, headers, body, status, code) -> None:
    client = await aiohttp_client(_app())
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    resp = await client.post("/v1/pods", headers=headers, **kwargs)
    assert resp.status == status
    if code:
        payload = await resp.json()
        assert payload["error"] == code
        assert payload["message"]
        assert payload["requestId"]


async def test_unexpected_exception_is_500_without_details(aiohttp_client) -> None:
    client = await aiohttp_client(_app())
    resp = await client.get("/boom", headers={"Authorization": "Bearer s3cret"})
    assert resp.status == 500
    assert "bug" not in (await resp.text())


async def test_client_gets_the_vocabulary_back(aiohttp_server) -> None:
    server = await aiohttp_server(_app())
    api = ApiClient(str(server.make_url("")), "s3cret")
    try:
        bad = wire.PodCreateRequest.model_validate({"pod": {**POD, "metadata": {"name": "missing", "uid": "u"}}})
        with pytest.raises(errors.NotFound):
            await api.request("POST", "/v1/pods", body=bad)
        api_wrong = ApiClient(str(server.make_url("")), "nope")
        with pytest.raises(errors.Unauthorized):
            await api_wrong.request("POST", "/v1/pods", body=bad)
        await api_wrong.close()
    finally:
        await api.close()


async def test_client_reports_unreachable_service_as_unavailable() -> None:
    api = ApiClient("http://127.0.0.1:9", "t", timeout=2)
    try:
        with pytest.raises(errors.Unavailable):
            await api.request("GET", "/v1/ping")
    finally:
        await api.close()


class _Listen(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=0, le=65535)


class _Settings(BaseModel):
    listen: _Listen = Field(default_factory=_Listen)
    token_file: str = "/nonexistent"
    sidecars: list[str] = Field(default_factory=list)


def test_settings_file_then_environment_then_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('token_file = "/from/file"\n[listen]\nport = 4000\n')
    env = {"KOD_T_LISTEN__PORT": "5000", "KOD_T_SIDECARS": '["a", "b"]'}
    s = load_settings(_Settings, cfg, env_prefix="KOD_T_", environ=env, overrides={"token_file": "/from/flag"})
    assert (s.listen.port, s.token_file, s.sidecars) == (5000, "/from/flag", ["a", "b"])


@pytest.mark.parametrize(
    ("text", "env", "says"),
    [
        ("port = [", {}, ["c.toml is not valid TOML"]),
        ("", {"KOD_T_SIDECARS": "[oops"}, ["KOD_T_SIDECARS is not valid JSON"]),
        # A value out of range may come from either: the field, and both places to look.
        ("", {"KOD_T_LISTEN__PORT": "99999"}, ["listen.port", "c.toml", "KOD_T_* variables"]),
    ],
    ids=["file", "env-json", "env-value"],
)
def test_bad_settings_say_where_they_came_from(tmp_path: Path, text: str, env: dict[str, str], says: list[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(errors.InvalidInput) as exc:
        load_settings(_Settings, cfg, env_prefix="KOD_T_", environ=env)
    assert all(fragment in str(exc.value) for fragment in says), str(exc.value)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../b", ""])
def test_resolved_file_paths_cannot_escape_the_volume(path: str) -> None:
    with pytest.raises(ValueError):
        wire.FileItem(path=path, data="")


def test_kubernetes_pod_json_validates_and_keeps_security_fields() -> None:
    pod = wire.Pod.model_validate(
        {
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
            "spec": {
                "hostNetwork": True,
                "tolerations": [],
                "containers": [{"name": "c", "image": "i", "securityContext": {"privileged": True}}],
            },
        }
    )
    assert pod.spec.hostNetwork is True
    assert pod.spec.containers[0].securityContext and pod.spec.containers[0].securityContext.privileged


async def test_a_stream_cut_in_the_middle_is_unavailable(aiohttp_server) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial\n")
        assert request.transport is not None
        request.transport.close()  # the server goes away mid-stream
        return response

    app = web.Application()
    app.router.add_get("/cut", cut)
    server = await aiohttp_server(app)
    api = ApiClient(str(server.make_url("")), None)
    try:
        for reader in (api.stream("GET", "/cut"), api.lines("/cut")):
            got = []
            with pytest.raises(errors.Unavailable):
                async for chunk in reader:
                    got.append(chunk)
            assert b"".join(got).startswith(b"partial")
    finally:
        await api.close()
