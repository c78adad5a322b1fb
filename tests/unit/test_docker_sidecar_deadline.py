"""activeDeadlineSeconds against a loaded machine, deterministically: the deadline runs out while a
round of the pod's worker is between its deadline check and a container's start (the engine slow
to create it, or to start it). As on a kubelet, no container starts once the deadline ran out, one
whose start was under way is stopped with the grace period, and the pod reads Failed/
DeadlineExceeded only once nothing of it runs (the kubelet's status manager holds a terminal phase
back while the pod could have running containers).

The clock: the pod's creation time is moved back while the engine holds the call, which is what
the deadline is measured from (a loaded machine, seen from the pod). Against the real node:
tests/e2e/test_virtual_node_deadline.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from kod import wire
from sidecars.docker import naming, status
from sidecars.docker.runtime import Runtime
from sidecars.docker.state import PodState
from tests.unit.docker_sidecar_fake_engine import FakeEngine
from tests.unit.docker_sidecar_runtime_support import engine, rt, within  # noqa: F401 - fixtures by name

DEADLINE = 60
GRACE = 2


def request(restart_policy: str, *, init: bool) -> wire.PodCreateRequest:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "img"}],
        "restartPolicy": restart_policy,
        "activeDeadlineSeconds": DEADLINE,
        "terminationGracePeriodSeconds": GRACE,
    }
    if init:
        spec["initContainers"] = [{"name": "init", "image": "img"}]
    return wire.PodCreateRequest.model_validate(
        {"pod": {"metadata": {"name": "web", "namespace": "ns", "uid": "u-1"}, "spec": spec}, "volumes": []}
    )


@pytest.fixture
def published(rt: Runtime) -> Iterator[list[wire.PodStatus]]:
    """Every status the sidecar publishes (what interlink, then the API, would show)."""
    seen: list[wire.PodStatus] = []
    publish = rt.hub.publish

    def record(event: wire.WatchEvent) -> None:
        if event.type == "STATUS" and event.pod is not None:
            seen.append(event.pod.model_copy(deep=True))
        publish(event)

    rt.hub.publish = record  # type: ignore[method-assign]
    yield seen
    rt.hub.publish = publish  # type: ignore[method-assign]


def ids(engine: FakeEngine, role: str) -> list[str]:
    return [c["Id"] for c in engine.of_pod("u-1") if c["Labels"][naming.ROLE] == role]


async def idle(pod: PodState) -> None:
    await within(5, lambda: pod.task is None or pod.task.done())


async def exited(rt: Runtime, pod: PodState, engine: FakeEngine, cid: str, code: int) -> None:
    """The container's process ends and the engine's event reaches the worker."""
    engine.exit(cid, code)
    pod.stale.add(cid)
    rt.worker.kick(pod)


def deadline_passes(pod: PodState) -> None:
    pod.created -= timedelta(seconds=DEADLINE + 1)


def running_while_failed(seen: list[wire.PodStatus]) -> list[wire.PodStatus]:
    return [s for s in seen if s.phase == "Failed" and any(
        c.state.running is not None for c in s.initContainerStatuses + s.containerStatuses)]


async def settled_failed(rt: Runtime, pod: PodState) -> wire.PodStatus:
    await within(5, lambda: rt.worker.status_of(pod).phase == "Failed")
    await idle(pod)
    st = rt.worker.status_of(pod)
    assert (st.phase, st.reason) == ("Failed", status.DEADLINE_EXCEEDED)
    return st


@pytest.mark.parametrize("case", ["main after its init container", "a restart"])
async def test_no_container_starts_once_the_deadline_ran_out_while_the_engine_was_slow(
    rt: Runtime, engine: FakeEngine, published: list[wire.PodStatus], case: str
) -> None:
    init = case == "main after its init container"
    await rt.create(request("Never" if init else "Always", init=init))
    pod = rt.table.get("u-1")
    assert pod is not None
    await idle(pod)
    before = ids(engine, "init" if init else "main")
    assert len(before) == 1 and engine.containers_[before[0]]["State"] == "running"
    engine.gates["create"] = asyncio.Event()  # the engine is slow to create the next container
    await exited(rt, pod, engine, before[0], 0)
    await within(5, lambda: pod.lock.locked())  # the round checked the deadline; its create waits
    await asyncio.sleep(0.02)
    deadline_passes(pod)
    engine.calls.clear()
    engine.gates["create"].set()
    st = await settled_failed(rt, pod)
    assert not [c for c in engine.calls if c.startswith("start ")], engine.calls
    # As on a kubelet, which never made it: the main container waits as before, or shows how
    # its last run ended; the container made for nothing is gone.
    main = st.containerStatuses[0].state
    if init:
        assert main.waiting is not None and main.waiting.reason == "PodInitializing"
        assert ids(engine, "main") == []
    else:
        assert main.terminated is not None and main.terminated.exitCode == 0
        assert ids(engine, "main") == before
    assert [engine.containers_[c]["State"] for c in ids(engine, "infra")] == ["exited"]  # the tmpfs went with it
    assert not running_while_failed(published)


async def test_a_container_whose_start_ends_after_the_deadline_is_stopped_before_the_pod_reads_failed(
    rt: Runtime, engine: FakeEngine, published: list[wire.PodStatus]
) -> None:
    await rt.create(request("Never", init=True))
    pod = rt.table.get("u-1")
    assert pod is not None
    await idle(pod)
    (init,) = ids(engine, "init")
    engine.gates["start"] = asyncio.Event()  # the start was sent in time; the engine is slow
    await exited(rt, pod, engine, init, 0)
    await within(5, lambda: len(ids(engine, "main")) == 1)
    (main,) = ids(engine, "main")
    deadline_passes(pod)
    engine.gates["start"].set()
    st = await settled_failed(rt, pod)
    assert f"start {main}" in engine.calls and f"stop {main} {GRACE}" in engine.calls  # with its grace period
    assert st.containerStatuses[0].state.terminated is not None
    assert engine.containers_[main]["State"] == "exited"
    assert not running_while_failed(published), [s.containerStatuses for s in running_while_failed(published)]
