"""interlink in front of real (fake) sidecars: routing, the pod calls, ping, auth, request ids."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from interlink.app import create_app
from interlink.handlers.ping import merge
from kod.wire import NodeInfo, Taint
from tests.unit.interlink_fake_sidecar import AUTH, FakeSidecar, interlink_settings, pod_body

Factory = Callable[..., Any]


@pytest.fixture
async def sidecars() -> AsyncIterator[dict[str, FakeSidecar]]:
    started: dict[str, FakeSidecar] = {}
    for name in ("gpu", "docker"):
        fake = FakeSidecar(name, token=f"{name}-token")
        await fake.start()
        started[name] = fake
    yield started
    for fake in started.values():
        await fake.stop()


@pytest.fixture
async def interlink(aiohttp_client: Any, sidecars: dict[str, FakeSidecar]) -> TestClient:
    """interlink routing runtimeClassName=nvidia or label kod.io/gpu=yes to "gpu", the rest to "docker"."""
    settings = interlink_settings(
        sidecars["gpu"],
        sidecars["docker"],
        rules={"gpu": {"runtime_class": "nvidia"}},
    )
    return await aiohttp_client(create_app(settings), server_kwargs={"handler_cancellation": True})


async def test_pods_go_to_the_sidecar_their_rule_names(interlink: TestClient, sidecars: dict[str, FakeSidecar]) -> None:
    plain = await interlink.post("/v1/pods", json=pod_body("web", "u-web"), headers=AUTH)
    gpu = await interlink.post("/v1/pods", json=pod_body("render", "u-render", runtimeClassName="nvidia"), headers=AUTH)
    assert (plain.status, gpu.status) == (201, 201)
    assert (await plain.json())["sidecar"] == "docker"
    assert (await gpu.json())["sidecar"] == "gpu"
    assert set(sidecars["docker"].pods) == {("default", "web")}
    assert set(sidecars["gpu"].pods) == {("default", "render")}


async def test_label_and_annotation_rules_must_all_hold(aiohttp_client: Any, sidecars: dict[str, FakeSidecar]) -> None:
    rule = {"labels": {"kod.io/runtime": "gpu"}, "annotations": {"kod.io/tier": "fast"}}
    settings = interlink_settings(sidecars["gpu"], sidecars["docker"], rules={"gpu": rule})
    client = await aiohttp_client(create_app(settings))
    both = pod_body("a", "ua", labels={"kod.io/runtime": "gpu"}, annotations={"kod.io/tier": "fast"})
    one = pod_body("b", "ub", labels={"kod.io/runtime": "gpu"})
    assert (await (await client.post("/v1/pods", json=both, headers=AUTH)).json())["sidecar"] == "gpu"
    assert (await (await client.post("/v1/pods", json=one, headers=AUTH)).json())["sidecar"] == "docker"


async def test_a_pod_no_rule_takes_is_refused_with_the_rules(aiohttp_client: Any, sidecars: dict[str, FakeSidecar]) -> None:
    settings = interlink_settings(sidecars["gpu"], rules={"gpu": {"runtime_class": "nvidia"}})
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/v1/pods", json=pod_body("web", "u1"), headers=AUTH)
    body = await resp.json()
    assert resp.status == 400
    assert "no sidecar takes pod default/web" in body["message"] and "nvidia" in body["message"]
    assert not sidecars["gpu"].pods


async def test_create_is_idempotent_and_a_name_stays_with_its_sidecar(interlink: TestClient, sidecars: dict[str, FakeSidecar]) -> None:
    first = await interlink.post("/v1/pods", json=pod_body("render", "u1", runtimeClassName="nvidia"), headers=AUTH)
    again = await interlink.post("/v1/pods", json=pod_body("render", "u1", runtimeClassName="nvidia"), headers=AUTH)
    assert (first.status, again.status) == (201, 200)
    # Same name, new uid, and a spec the rules would send elsewhere: the sidecar that holds the
    # name decides (here: a conflict), instead of a second pod of that name appearing elsewhere.
    other = await interlink.post("/v1/pods", json=pod_body("render", "u2"), headers=AUTH)
    assert other.status == 409
    assert not sidecars["docker"].pods


async def test_get_list_and_delete_reach_the_sidecar_that_holds_the_pod(
    interlink: TestClient, sidecars: dict[str, FakeSidecar]
) -> None:
    await interlink.post("/v1/pods", json=pod_body("render", "u-r", runtimeClassName="nvidia"), headers=AUTH)
    await interlink.post("/v1/pods", json=pod_body("web", "u-w"), headers=AUTH)
    sidecars["gpu"].set_phase("default", "render", "Running", podIP="10.0.0.7")

    got = await (await interlink.get("/v1/pods/default/render", headers=AUTH)).json()
    assert (got["phase"], got["podIP"], got["sidecar"]) == ("Running", "10.0.0.7", "gpu")

    listed = await (await interlink.get("/v1/pods", headers=AUTH)).json()
    assert [(p["name"], p["sidecar"]) for p in listed["items"]] == [("render", "gpu"), ("web", "docker")]

    wrong_uid = await interlink.delete("/v1/pods/default/web", params={"uid": "not-it"}, headers=AUTH)
    assert wrong_uid.status == 404
    deleted = await interlink.delete("/v1/pods/default/web", params={"uid": "u-w", "gracePeriodSeconds": "0"}, headers=AUTH)
    assert deleted.status == 200 and (await deleted.json())["sidecar"] == "docker"
    assert ("default", "web") not in sidecars["docker"].pods
    seen = [s for s in sidecars["docker"].seen if s.method == "DELETE"][-1]
    assert seen.query == {"uid": "u-w", "gracePeriodSeconds": "0"}
    gone = await interlink.get("/v1/pods/default/web", headers=AUTH)
    assert gone.status == 404 and (await gone.json())["error"] == "NotFound"


async def test_a_pod_created_before_interlink_started_is_found(aiohttp_client: Any, sidecars: dict[str, FakeSidecar]) -> None:
    sidecars["gpu"].add_pod("ns1", "old", "u-old")
    settings = interlink_settings(sidecars["docker"], sidecars["gpu"])
    client = await aiohttp_client(create_app(settings))
    got = await client.get("/v1/pods/ns1/old", headers=AUTH)
    assert got.status == 200 and (await got.json())["sidecar"] == "gpu"


async def test_ping_adds_up_the_sidecars_and_reports_each(aiohttp_client: Any) -> None:
    taint = Taint(key="kod.io/virtual-node", value="true", effect="NoSchedule")
    a = FakeSidecar("a", capacity={"cpu": "2", "memory": "4Gi", "pods": "110"}, taints=[taint], labels={"x": "1"})
    b = FakeSidecar("b", capacity={"cpu": "1500m", "memory": "512Mi", "nvidia.com/gpu": "1"}, taints=[taint],
                    labels={"x": "2", "y": "3"})
    down = FakeSidecar("down")
    for fake in (a, b, down):
        await fake.start()
    await down.stop()
    try:
        client = await aiohttp_client(create_app(interlink_settings(a, b, down)))
        resp = await client.get("/v1/ping", headers=AUTH)
        info = NodeInfo.model_validate(await resp.json())
        assert resp.status == 200
        assert info.capacity == {"cpu": "3500m", "memory": "4608Mi", "nvidia.com/gpu": "1", "pods": "110"}
        assert info.taints == [taint]
        assert info.labels == {"x": "1", "y": "3"}
        health = {h.name: h for h in info.sidecars}
        assert health["a"].ok and health["b"].ok and not health["down"].ok
        assert "cannot be reached" in (health["down"].message or "")
    finally:
        await a.stop()
        await b.stop()


async def test_ping_is_unavailable_when_no_sidecar_answers(aiohttp_client: Any) -> None:
    fake = FakeSidecar("only")
    await fake.start()
    await fake.stop()
    client = await aiohttp_client(create_app(interlink_settings(fake)))
    resp = await client.get("/v1/ping", headers=AUTH)
    assert resp.status == 503
    assert "no sidecar answers" in (await resp.json())["message"]


def test_merge_keeps_binary_quantities_binary_and_sums_exactly() -> None:
    infos = [NodeInfo(capacity={"memory": "1Gi", "cpu": "0.5"}), NodeInfo(capacity={"memory": "1024Mi", "cpu": "250m"})]
    assert merge(infos).capacity == {"cpu": "750m", "memory": "2Gi"}


@pytest.mark.parametrize(
    ("headers", "path"),
    [({}, "/v1/ping"), ({"Authorization": "Bearer wrong"}, "/v1/pods"), ({"Authorization": "Basic dms="}, "/v1/watch")],
)
async def test_a_missing_or_wrong_token_is_401(interlink: TestClient, headers: dict[str, str], path: str) -> None:
    resp = await interlink.get(path, headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"] == "Unauthorized"


async def test_the_openapi_document_is_served_without_a_token(interlink: TestClient) -> None:
    resp = await interlink.get("/openapi.json")
    assert resp.status == 200
    assert (await resp.json())["openapi"].startswith("3.1")


async def test_the_request_id_travels_to_the_sidecar(interlink: TestClient, sidecars: dict[str, FakeSidecar]) -> None:
    resp = await interlink.post("/v1/pods", json=pod_body("web", "u1"), headers={**AUTH, "X-Request-Id": "trace-42"})
    assert resp.headers["X-Request-Id"] == "trace-42"
    assert [s.request_id for s in sidecars["docker"].seen if s.method == "POST"] == ["trace-42"]
    fresh = await interlink.get("/v1/pods/default/web", headers=AUTH)
    rid = fresh.headers["X-Request-Id"]
    assert rid and sidecars["docker"].seen[-1].request_id == rid


async def test_interlink_sends_each_sidecar_its_own_token(aiohttp_client: Any, sidecars: dict[str, FakeSidecar]) -> None:
    sidecars["docker"].token = "rotated"  # the sidecar now expects another token
    await sidecars["docker"].stop()
    await sidecars["docker"].start()
    client = await aiohttp_client(create_app(interlink_settings(sidecars["docker"])))
    resp = await client.post("/v1/pods", json=pod_body("web", "u1"), headers=AUTH)
    assert resp.status == 201
    stale = interlink_settings(sidecars["docker"])
    stale.sidecars[0].token = None
    stale.sidecars[0].token_file = None
    client2 = await aiohttp_client(create_app(stale))
    refused = await client2.get("/v1/pods/default/web", headers=AUTH)
    body = await refused.json()
    # interlink's token for the sidecar is wrong, not the caller's: 503 and a message saying so.
    assert refused.status == 503 and "refused interlink's token" in body["message"]


async def test_a_sidecar_with_a_malformed_capacity_is_reported_not_summed(aiohttp_client: Any) -> None:
    good = FakeSidecar("good", capacity={"cpu": "2"})
    bad = FakeSidecar("bad", capacity={"cpu": "two"})
    await good.start()
    await bad.start()
    try:
        client = await aiohttp_client(create_app(interlink_settings(good, bad)))
        resp = await client.get("/v1/ping", headers=AUTH)
        info = NodeInfo.model_validate(await resp.json())
        assert resp.status == 200 and info.capacity == {"cpu": "2"}
        assert [(h.name, h.ok) for h in info.sidecars] == [("good", True), ("bad", False)]
        assert "'two' is not a Kubernetes quantity" in (info.sidecars[1].message or "")
    finally:
        await good.stop()
        await bad.stop()
