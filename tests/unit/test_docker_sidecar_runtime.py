"""The runtime's decisions against an in-memory engine, driven through the pod's worker as
events drive it: the one stop sequence (a dead sandbox kills, a delete's shorter grace period
kills at once, a container that never started is not stopped round after round), a create retried
while its first attempt rolls back, and CrashLoopBackOff timing. With real containers:
tests/e2e/test_docker_sidecar*.py."""

from __future__ import annotations

import asyncio

import pytest

from kod import wire
from sidecars.docker import naming
from sidecars.docker.runtime import Runtime
from sidecars.docker.state import PodState
from tests.unit.docker_sidecar_fake_engine import FakeEngine
from tests.unit.test_docker_sidecar_adoption import request
from tests.unit.docker_sidecar_runtime_support import engine, rt, within  # noqa: F401 - fixtures by name


async def idle(pod: PodState) -> None:
    """Wait until the pod's worker has nothing left to do."""
    await within(5, lambda: pod.task is None or pod.task.done())


async def changed(rt: Runtime, pod: PodState, *cids: str) -> None:
    """What an engine event about `cids` does: the worker inspects them and goes round."""
    pod.stale.update(cids)
    rt.worker.kick(pod)
    await idle(pod)


async def created(rt: Runtime, *, secret: bool = False) -> PodState:
    await rt.create(request(secret=secret))
    pod = rt.table.get("u-1")
    assert pod is not None
    await idle(pod)
    return pod


def main_ids(engine: FakeEngine) -> list[str]:
    return [c["Id"] for c in engine.of_pod("u-1") if c["Labels"][naming.ROLE] == "main"]


async def test_a_pod_whose_sandbox_died_has_its_containers_killed(rt: Runtime, engine: FakeEngine) -> None:
    pod = await created(rt)
    assert pod.infra_id is not None
    (main,) = main_ids(engine)
    engine.exit(pod.infra_id, 0)  # e.g. `docker stop` of the infra container
    engine.calls.clear()
    await changed(rt, pod, pod.infra_id)
    assert engine.calls == [f"kill {main}"]  # at once: without its network nothing ends cleanly
    assert rt.worker.status_of(pod).reason == "PodSandboxDied"


async def test_a_failed_pod_does_not_stop_a_container_that_never_started_round_after_round(
    rt: Runtime, engine: FakeEngine
) -> None:
    pod = await created(rt)
    assert pod.infra_id is not None
    (main,) = main_ids(engine)
    engine.containers_[main]["State"] = "created"  # created, its start never came
    engine.exit(pod.infra_id, 0)
    engine.calls.clear()
    await changed(rt, pod, main, pod.infra_id)  # the worker would not go idle if it looped
    assert engine.calls == []
    assert rt.worker.status_of(pod).phase == "Failed"


async def test_a_second_delete_with_a_shorter_grace_period_kills_at_once_and_both_get_the_answer(
    rt: Runtime, engine: FakeEngine
) -> None:
    await created(rt, secret=True)
    (main,) = main_ids(engine)
    engine.gates["stop"] = asyncio.Event()  # the container ignores SIGTERM: the stop waits its grace
    first = asyncio.ensure_future(rt.delete("ns", "web", uid="u-1", grace=30))
    await within(5, lambda: f"stop {main} 30" in engine.calls)
    second = asyncio.ensure_future(rt.delete("ns", "web", uid=None, grace=0))
    await within(5, lambda: f"kill {main}" in engine.calls)
    engine.gates["stop"].set()  # the killed container's stop returns
    a, b = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert a == b and a.phase == "Failed"  # killed: exit 137
    assert engine.of_pod("u-1") == [] and engine.volumes_ == {} and rt.list() == []


async def test_a_create_retried_while_its_first_attempt_rolls_back_waits_and_sets_the_pod_up_whole(
    rt: Runtime, engine: FakeEngine
) -> None:
    req = request()
    engine.gates["archive"] = asyncio.Event()
    first = asyncio.ensure_future(rt.create(req))
    await within(5, lambda: any(c["State"] == "running" for c in engine.of_pod("u-1")))
    retry = asyncio.ensure_future(rt.create(req))
    await asyncio.sleep(0.05)
    first.cancel()  # its caller went away (interlink was killed): the set-up is rolled back
    engine.gates["archive"].set()
    status, was_created = await asyncio.wait_for(retry, 5)
    assert was_created and status.phase == "Running"
    with pytest.raises(asyncio.CancelledError):
        await first
    infra = [c for c in engine.of_pod("u-1") if c["Labels"][naming.ROLE] == "infra"]
    assert len(infra) == 1 and infra[0]["State"] == "running"
    assert f"/kod/mem/{naming.POPULATED_MARKER}" in engine.files[infra[0]["Id"]]
    assert len(main_ids(engine)) == 1
    assert [p.uid for p in rt.list()] == ["u-1"]


async def test_a_create_whose_caller_goes_away_while_its_container_starts_runs_the_process_once(
    rt: Runtime, engine: FakeEngine
) -> None:
    engine.exit_at_once = True  # `echo hello`: exited by the time anyone looks again
    engine.gates["start:main"] = asyncio.Event()
    creating = asyncio.ensure_future(rt.create(request(secret=False)))
    await within(5, lambda: any(c["Labels"][naming.ROLE] == "main" for c in engine.of_pod("u-1")))
    await asyncio.sleep(0.1)  # the main container's start is with the engine now
    creating.cancel()  # InterLink gave up on a slow answer
    await asyncio.sleep(0.1)
    engine.gates["start:main"].set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(creating, 5)
    pod = rt.table.get("u-1")
    assert pod is not None  # set up: the pod stays, its worker goes on
    await idle(pod)
    (first, *_) = main_ids(engine)
    # Once per container: a restart (restartPolicy Always) is a new container, never the old
    # container's process run again.
    assert engine.runs[first] == 1, engine.calls
    assert all(n == 1 for n in engine.runs.values()), engine.runs


async def test_crash_loop_back_off_waits_10_s_before_the_second_restart(rt: Runtime, engine: FakeEngine) -> None:
    pod = await created(rt)
    (first,) = main_ids(engine)
    engine.exit(first, 1)
    await changed(rt, pod, first)
    assert len(main_ids(engine)) == 2  # the first restart is immediate
    (second,) = [i for i in main_ids(engine) if i != first]
    assert engine.containers_[second]["State"] == "running"
    engine.exit(second, 1)
    await changed(rt, pod, second)
    assert len(main_ids(engine)) == 2  # nothing restarted yet: a timer will
    assert pod.timer is not None
    # 10 s from the crash (minus the moments this test took since): not now, and not later.
    assert 5.0 < pod.timer.when() - asyncio.get_running_loop().time() <= 10.0
    assert rt.worker.status_of(pod).containerStatuses[0].state.waiting == wire.ContainerStateWaiting(
        reason="CrashLoopBackOff", message="back-off 10s restarting failed container=main pod=web_ns(u-1)"
    )


async def test_a_third_run_replaces_the_oldest_and_starts_at_once(rt: Runtime, engine: FakeEngine) -> None:
    rt.settings.restart.initial_seconds = 0.05  # the back-off is tested above; here, what it leads to
    pod = await created(rt)
    for _ in range(2):
        (latest,) = [i for i in main_ids(engine) if engine.containers_[i]["State"] == "running"]
        engine.exit(latest, 1)
        await changed(rt, pod, latest)
        await within(5, lambda latest=latest: any(engine.containers_[i]["State"] == "running"
                                                   for i in main_ids(engine) if i != latest))
    # The kubelet keeps the latest dead container (for `logs --previous`) and removes older ones.
    await within(5, lambda: len(main_ids(engine)) == 2)
    assert rt.worker.status_of(pod).containerStatuses[0].restartCount == 2


async def test_a_rolled_back_create_whose_status_was_listed_is_reported_deleted(rt: Runtime, engine: FakeEngine) -> None:
    engine.gates["archive"] = asyncio.Event()
    with rt.hub.subscribe() as watch:
        creating = asyncio.ensure_future(rt.create(request()))
        await within(5, lambda: any(c["State"] == "running" for c in engine.of_pod("u-1")))
        (listed,) = rt.list()  # a watch opened now (interlink reconnecting) gets it in its SYNC
        assert listed.uid == "u-1"
        creating.cancel()  # then its caller goes away: rolled back
        with pytest.raises(asyncio.CancelledError):
            await creating
        events = []
        while (line := await asyncio.wait_for(watch.get(), 1)) is not None:
            events.append(wire.WatchEvent.model_validate_json(line))
            if events[-1].type == "DELETED":
                break
    assert rt.list() == [] and engine.of_pod("u-1") == []
    assert [(e.type, e.pod.uid) for e in events if e.pod is not None] == [("STATUS", "u-1"), ("DELETED", "u-1")]
    assert events[-1].pod is not None and events[-1].pod.version > listed.version
