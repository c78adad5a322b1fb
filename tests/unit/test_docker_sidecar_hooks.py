"""Lifecycle hooks as the kubelet runs them, against the in-memory engine: postStart holds the
container's status at ContainerCreating until it returns, and a failed one records
FailedPostStartHook and kills the container (which restarts per policy); preStop runs before the
stop signal, inside the grace period, and not at all when the pod is killed with grace 0."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kod import wire
from sidecars.docker import hooks
from sidecars.docker.runtime import Runtime
from sidecars.docker.state import PodState
from tests.unit.docker_sidecar_fake_engine import FakeEngine
from tests.unit.docker_sidecar_runtime_support import engine, rt, within  # noqa: F401 - fixtures by name


def pod_request(lifecycle: dict[str, Any], restart: str = "Always", grace: int = 9) -> wire.PodCreateRequest:
    spec = {"containers": [{"name": "main", "image": "img", "lifecycle": lifecycle}], "restartPolicy": restart,
            "terminationGracePeriodSeconds": grace}
    return wire.PodCreateRequest.model_validate({"pod": {"metadata": {"name": "web", "namespace": "ns", "uid": "u-1"}, "spec": spec}})


async def settle(pod: PodState) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await within(5, lambda: pod.task is None or pod.task.done())


async def create(rt: Runtime, lifecycle: dict[str, Any], **kw: Any) -> PodState:
    await rt.create(pod_request(lifecycle, **kw))
    pod = rt.table.get("u-1")
    assert pod is not None
    await settle(pod)
    return pod


def events(rt: Runtime, pod: PodState) -> dict[tuple[str, str], int]:
    return {(e.reason, e.message): e.count for e in rt.worker.status_of(pod).events}


async def test_post_start_holds_the_status_at_container_creating_until_it_returns(rt: Runtime, engine: FakeEngine) -> None:
    release = asyncio.Event()
    ran: list[list[str]] = []

    def handler(cid: str, cmd: list[str]) -> tuple[int, bytes]:
        ran.append(cmd)
        return 0, b""

    async def slow_exec(ref: str, cmd: list[str], *, timeout: float) -> tuple[int, bytes]:
        await release.wait()
        return handler(ref, cmd)

    engine.exec_run = slow_exec  # type: ignore[method-assign]
    pod = await create(rt, {"postStart": {"exec": {"command": ["sh", "-c", "echo hi > /tmp/started"]}}})
    st = rt.worker.status_of(pod).containerStatuses[0]
    assert st.state.waiting is not None and st.state.waiting.reason == "ContainerCreating" and not st.started
    assert rt.worker.status_of(pod).phase == "Pending"
    release.set()
    await within(5, lambda: rt.worker.status_of(pod).containerStatuses[0].state.running is not None)
    assert ran == [["sh", "-c", "echo hi > /tmp/started"]]
    st = rt.worker.status_of(pod).containerStatuses[0]
    assert st.ready and st.started and rt.worker.status_of(pod).phase == "Running"


async def test_a_failed_post_start_kills_the_container_which_restarts(rt: Runtime, engine: FakeEngine) -> None:
    engine.exec_handler = lambda cid, cmd: (3, b"nope\n")
    pod = await create(rt, {"postStart": {"exec": {"command": ["sh", "-c", "exit 3"]}}})
    first = next(iter(pod.runs())).id
    await within(5, lambda: f"stop {first} 9" in engine.calls)  # the pod's grace period
    await within(5, lambda: len(list(pod.runs())) == 2)
    await settle(pod)
    assert events(rt, pod)[("FailedPostStartHook", "PostStartHook failed")] >= 1  # no output: it may hold secrets
    assert events(rt, pod)[("Killing", "FailedPostStartHook")] >= 1
    assert rt.worker.status_of(pod).containerStatuses[0].restartCount >= 1


async def test_a_failed_post_start_with_restart_policy_never_leaves_the_pod_failed(rt: Runtime, engine: FakeEngine) -> None:
    engine.exec_handler = lambda cid, cmd: (1, b"")
    pod = await create(rt, {"postStart": {"exec": {"command": ["false"]}}}, restart="Never")
    await within(5, lambda: rt.worker.status_of(pod).phase == "Failed")
    term = rt.worker.status_of(pod).containerStatuses[0].state.terminated
    assert term is not None and term.exitCode == 143 and len(list(pod.runs())) == 1


async def test_pre_stop_runs_before_the_stop_signal_which_gets_the_rest_of_the_grace_period(
    rt: Runtime, engine: FakeEngine
) -> None:
    pod = await create(rt, {"preStop": {"exec": {"command": ["sh", "-c", "echo bye"]}}})
    cid = next(iter(pod.runs())).id
    engine.calls.clear()
    final = await rt.delete("ns", "web", uid="u-1", grace=None)
    assert final.phase in ("Failed", "Succeeded")
    calls = [c for c in engine.calls if c.startswith(("exec", "stop", "kill"))]
    assert calls == [f"exec {cid} sh -c echo bye", f"stop {cid} 9"]


async def test_a_kill_with_no_grace_period_runs_no_pre_stop(rt: Runtime, engine: FakeEngine) -> None:
    pod = await create(rt, {"preStop": {"exec": {"command": ["true"]}}})
    cid = next(iter(pod.runs())).id
    engine.calls.clear()
    await rt.delete("ns", "web", uid="u-1", grace=0)
    assert [c for c in engine.calls if c.startswith(("exec", "stop", "kill"))] == [f"kill {cid}"]


async def test_a_failed_pre_stop_is_reported_and_the_stop_goes_on(rt: Runtime, engine: FakeEngine) -> None:
    engine.exec_handler = lambda cid, cmd: (1, b"secret output")
    pod = await create(rt, {"preStop": {"exec": {"command": ["false"]}}})
    cid = next(iter(pod.runs())).id
    slot = pod.slots["main"]
    await hooks.pre_stop(engine, pod, slot, slot.runs[0], 5)  # type: ignore[arg-type]
    assert ("FailedPreStopHook", "PreStopHook failed") in {(e.reason, e.message) for e in pod.pod_events.values()}
    await rt.delete("ns", "web", uid="u-1", grace=5)
    assert f"stop {cid} 5" in engine.calls


async def test_a_sleep_pre_stop_is_cut_at_the_grace_period(rt: Runtime, engine: FakeEngine) -> None:
    pod = await create(rt, {"preStop": {"sleep": {"seconds": 60}}})
    slot = pod.slots["main"]
    begun = asyncio.get_running_loop().time()
    spent = await hooks.pre_stop(engine, pod, slot, slot.runs[0], 1)  # type: ignore[arg-type]
    assert 0.9 <= spent < 2 and asyncio.get_running_loop().time() - begun < 2


@pytest.mark.parametrize(("grace", "spent", "left"), [(30, 10.7, 20), (30, 29.5, 2), (9, 0.2, 9), (0, 0.0, 0), (3, 5.0, 2)])
def test_the_stop_signal_gets_what_the_pre_stop_left_but_at_least_2_s(grace: int, spent: float, left: int) -> None:
    assert hooks.remaining_grace(grace, spent) == left
