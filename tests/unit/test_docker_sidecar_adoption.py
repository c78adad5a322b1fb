"""A restarted sidecar rebuilds its pods from Docker: a pod whose create was answered is adopted
untouched; one whose set-up a kill -9 interrupted (its create never answered, its Secret bytes
lost with the process) is rolled back, so the virtual kubelet's new create sets it up whole.

The engine is faked in memory (tests/unit/docker_sidecar_fake_engine.py); the kill -9 is the old
process's engine state handed to a new runtime, with the old one's calls never finishing. The
same runs against the real stack are tests/e2e/test_virtual_node_chaos.py."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kod import wire
from sidecars.docker import naming
from sidecars.docker.runtime import Runtime
from tests.unit.docker_sidecar_fake_engine import FakeEngine
from tests.unit.docker_sidecar_runtime_support import started, within


def request(uid: str = "u-1", *, secret: bool = True) -> wire.PodCreateRequest:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "img"}], "restartPolicy": "Always"}
    contents: list[dict[str, Any]] = []
    if secret:
        spec["volumes"] = [{"name": "s", "secret": {"secretName": "s"}}]
        spec["containers"][0]["volumeMounts"] = [{"name": "s", "mountPath": "/s"}]
        contents = [{"name": "s", "files": [{"path": "key", "data": base64.b64encode(b"k").decode()}]}]
    return wire.PodCreateRequest.model_validate(
        {"pod": {"metadata": {"name": "web", "namespace": "ns", "uid": uid}, "spec": spec}, "volumes": contents}
    )


@pytest.fixture
async def runtimes() -> AsyncIterator[list[Runtime]]:
    made: list[Runtime] = []
    yield made
    for rt in made:
        await rt.stop()


async def killed_during(op: str, req: wire.PodCreateRequest, runtimes: list[Runtime]) -> tuple[FakeEngine, asyncio.Task[Any]]:
    """A create held at engine operation `op`, and the engine as a new process finds it then."""
    engine = FakeEngine()
    old = await started(engine)
    runtimes.append(old)
    engine.gates[op] = asyncio.Event()  # never set: the old process dies waiting
    task = asyncio.ensure_future(old.create(req))
    infra = naming.infra_name("ns", "web", req.pod.metadata.uid)
    if op == "start":
        await within(5, lambda: engine.by_name(infra) is not None)
    else:
        await within(5, lambda: (c := engine.by_name(infra)) is not None and c["State"] == "running")
    await asyncio.sleep(0.05)
    return engine.crashed_copy(), task


@pytest.mark.parametrize("op", ["start", "archive"], ids=["infra-never-started", "contents-half-written"])
async def test_a_create_killed_mid_set_up_is_rolled_back_and_the_resent_create_sets_it_up_whole(
    op: str, runtimes: list[Runtime]
) -> None:
    req = request()
    engine, old_create = await killed_during(op, req, runtimes)
    assert engine.of_pod("u-1"), "the interrupted create left its infra container"

    new = await started(engine)
    runtimes.append(new)
    assert new.list() == []  # not listed: the virtual kubelet, never answered, creates it again
    assert engine.of_pod("u-1") == [] and engine.volumes_ == {}

    status, created = await new.create(req)
    assert created and status.phase == "Running"
    (infra,) = [c for c in engine.of_pod("u-1") if c["Labels"][naming.ROLE] == "infra"]
    assert {"/kod/mem/s/key", f"/kod/mem/{naming.POPULATED_MARKER}"} <= engine.files[infra["Id"]]
    assert [c["State"] for c in engine.of_pod("u-1") if c["Labels"][naming.ROLE] == "main"] == ["running"]
    old_create.cancel()


@pytest.mark.parametrize("secret", [True, False], ids=["with-volumes", "without-volumes"])
async def test_a_pod_set_up_before_the_kill_is_adopted_untouched(secret: bool, runtimes: list[Runtime]) -> None:
    engine = FakeEngine()
    old = await started(engine)
    runtimes.append(old)
    before, _ = await old.create(request(secret=secret))
    assert before.phase == "Running"
    engine = engine.crashed_copy()

    new = await started(engine)
    runtimes.append(new)
    (after,) = new.list()
    assert after.uid == "u-1" and after.phase == "Running"
    assert after.containerStatuses[0].containerID == before.containerStatuses[0].containerID
    assert after.version > before.version
    assert engine.calls == []  # nothing created, started, stopped or removed


async def test_a_pod_whose_delete_a_kill_interrupted_is_deleted_by_the_next_process(runtimes: list[Runtime]) -> None:
    engine = FakeEngine()
    old = await started(engine)
    runtimes.append(old)
    await old.create(request())
    engine.gates["stop"] = asyncio.Event()  # the delete waits in its graceful stop: kill -9 then
    deleting = asyncio.ensure_future(old.delete("ns", "web", uid="u-1", grace=30))
    await within(5, lambda: any(c.startswith("stop ") for c in engine.calls))
    engine = engine.crashed_copy()
    assert any(naming.is_deleting(c["Name"]) for c in engine.of_pod("u-1"))

    new = await started(engine)
    runtimes.append(new)
    await within(5, lambda: engine.of_pod("u-1") == [] and new.list() == [])
    assert engine.volumes_ == {}
    deleting.cancel()
