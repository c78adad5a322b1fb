"""Errors: bad input is 400 with a message and never reaches a sidecar; a sidecar's answers map to
the vocabulary; an unreachable, slow or garbled sidecar is 503. Never a 500 for bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from interlink.app import create_app
from interlink.state import STORE
from tests.unit.interlink_fake_sidecar import AUTH, FakeSidecar, Failure, interlink_settings, pod_body, wait_for


@pytest.fixture
async def fake() -> AsyncIterator[FakeSidecar]:
    sidecar = FakeSidecar("docker")
    await sidecar.start()
    sidecar.add_pod("default", "app", "u-app")
    yield sidecar
    await sidecar.stop()


@pytest.fixture
async def interlink(aiohttp_client: Any, fake: FakeSidecar) -> TestClient:
    client = await aiohttp_client(create_app(interlink_settings(fake)))
    await wait_for(client.app[STORE].all_synced.is_set, what="the sidecar's first SYNC")
    return client


def calls(fake: FakeSidecar) -> int:
    """Requests the sidecar got, besides interlink's status stream."""
    return len([s for s in fake.seen if s.path != "/v1/watch"])


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "needle"),
    [
        ("POST", "/v1/pods", {"data": b"{not json"}, "Invalid JSON"),
        ("POST", "/v1/pods", {"data": b""}, "empty"),
        ("POST", "/v1/pods", {"json": {"pod": {"metadata": {"name": "x"}}}}, "uid"),
        ("POST", "/v1/pods", {"json": {**pod_body("x", "u"), "surprise": 1}}, "surprise"),
        ("POST", "/v1/pods", {"json": pod_body("x", "u", containers=[])}, "containers"),
        ("POST", "/v1/pods", {"json": pod_body("x", "u", restartPolicy="Sometimes")}, "restartPolicy"),
        ("POST", "/v1/pods", {"json": [1, 2]}, "should be an object"),
        ("GET", "/v1/pods/Default/app", {}, "namespace"),
        ("GET", "/v1/pods/default/App_1", {}, "name"),
        ("DELETE", "/v1/pods/default/app?gracePeriodSeconds=-1", {}, "gracePeriodSeconds"),
        ("DELETE", "/v1/pods/default/app?gracePeriodSeconds=soon", {}, "gracePeriodSeconds"),
        ("DELETE", "/v1/pods/default/app?force=1", {}, "unknown query parameter"),
        ("GET", "/v1/pods/default/app/containers/Main/logs", {}, "container"),
        ("PUT", "/v1/pods", {"json": {}}, ""),
    ],
)
async def test_bad_input_is_400_with_a_message_and_never_reaches_a_sidecar(
    interlink: TestClient, fake: FakeSidecar, method: str, path: str, kwargs: dict[str, Any], needle: str
) -> None:
    before = calls(fake)
    resp = await interlink.request(method, path, headers=AUTH, **kwargs)
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"] == "InvalidInput" and needle in body["message"] and body["requestId"]
    assert calls(fake) == before


async def test_an_unknown_path_is_404_in_the_error_format(interlink: TestClient) -> None:
    resp = await interlink.get("/v2/nothing", headers=AUTH)
    assert resp.status == 404 and (await resp.json())["error"] == "NotFound"


@pytest.mark.parametrize(
    ("failure", "status", "code", "needle"),
    [
        (Failure(403, "Forbidden"), 403, "Forbidden", "broken on purpose"),
        (Failure(404, "NotFound"), 404, "NotFound", "broken on purpose"),
        (Failure(409, "Conflict"), 409, "Conflict", "broken on purpose"),
        (Failure(400, "InvalidInput"), 400, "InvalidInput", "broken on purpose"),
        (Failure(503, "Unavailable"), 503, "Unavailable", "broken on purpose"),
        (Failure(500, "Internal"), 500, "Internal", "broken on purpose"),
        (Failure(502, raw=b"<html>Bad Gateway</html>"), 503, "Unavailable", "Bad Gateway"),
        (Failure(429, raw=b"slow down"), 503, "Unavailable", "slow down"),
        (Failure(200, raw=b"not a pod status"), 503, "Unavailable", "malformed PodStatus"),
        (Failure(200, raw=b"{}", delay=1.5), 503, "Unavailable", "took longer than"),
    ],
    ids=["403", "404", "409", "400", "503", "500", "502-html", "429", "200-garbage", "timeout"],
)
async def test_a_sidecars_answer_maps_to_the_vocabulary(
    aiohttp_client: Any, fake: FakeSidecar, failure: Failure, status: int, code: str, needle: str
) -> None:
    # A sidecar timeout short enough for the slow answer (1.5 s) to be cut without the test waiting long.
    interlink = await aiohttp_client(create_app(interlink_settings(fake, sidecar_timeout=0.5)))
    await wait_for(interlink.app[STORE].all_synced.is_set, what="the sidecar's first SYNC")
    fake.fail = failure
    resp = await interlink.get("/v1/pods/default/app", headers=AUTH)
    body = await resp.json()
    assert (resp.status, body["error"]) == (status, code)
    assert needle in body["message"]


@pytest.mark.parametrize("call", ["create", "get", "delete", "logs"])
async def test_an_unreachable_sidecar_is_503_naming_it(aiohttp_client: Any, fake: FakeSidecar, call: str) -> None:
    client = await aiohttp_client(create_app(interlink_settings(fake)))
    await fake.stop()
    if call == "create":
        resp = await client.post("/v1/pods", json=pod_body("new", "u-new"), headers=AUTH)
    elif call == "get":
        resp = await client.get("/v1/pods/default/app", headers=AUTH)
    elif call == "delete":
        resp = await client.delete("/v1/pods/default/app", headers=AUTH)
    else:
        resp = await client.get("/v1/pods/default/app/containers/main/logs", headers=AUTH)
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "Unavailable"
    assert "'docker'" in body["message"] and "cannot be reached" in body["message"]


async def test_the_policy_refusal_of_a_sidecar_reaches_the_caller(interlink: TestClient) -> None:
    body = pod_body("evil", "u-evil", containers=[{"name": "c", "image": "i", "securityContext": {"privileged": True}}])
    resp = await interlink.post("/v1/pods", json=body, headers=AUTH)
    assert resp.status == 403
    assert "privileged" in (await resp.json())["message"]


async def test_fields_interlink_does_not_model_still_reach_the_sidecar(interlink: TestClient, fake: FakeSidecar) -> None:
    body = pod_body("web", "u-web", tolerations=[{"key": "kod.io/virtual-node", "operator": "Exists"}])
    resp = await interlink.post("/v1/pods", json=body, headers=AUTH)
    assert resp.status == 201
    # The sidecar got the body byte for byte, not interlink's re-serialisation of its model.
    assert fake.last_create_body is not None and b'"tolerations"' in fake.last_create_body


async def test_a_missing_sidecar_token_file_is_503_naming_it(aiohttp_client: Any, fake: FakeSidecar, tmp_path: Any) -> None:
    settings = interlink_settings(fake)
    settings.sidecars[0].token = None
    settings.sidecars[0].token_file = tmp_path / "not-yet.token"
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/v1/pods", json=pod_body("web", "u1"), headers=AUTH)
    body = await resp.json()
    assert resp.status == 503 and "not-yet.token" in body["message"] and "does not exist" in body["message"]
    # The sidecar writes its token file later: interlink picks it up without a restart.
    (tmp_path / "not-yet.token").write_text(f"{fake.token}\n")
    (tmp_path / "not-yet.token").chmod(0o600)
    await wait_for(client.app[STORE].all_synced.is_set, what="the stream to come up with the new token")
    assert (await client.post("/v1/pods", json=pod_body("web", "u1"), headers=AUTH)).status == 201
