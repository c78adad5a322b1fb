"""Termination messages as the kubelet reports them, against the in-memory engine: the file at
terminationMessagePath (a file of its own per container and run parity, bound there), its last
4 KiB; FallbackToLogsOnError's last 80 lines / 2 KiB of logs for a failed run only; the pod's
12 KiB shared among its containers."""

from __future__ import annotations

import asyncio
import io
import tarfile
from typing import Any

import pytest

from kod import wire
from sidecars.docker import naming, termination, volumes
from sidecars.docker.runtime import Runtime
from sidecars.docker.state import PodState
from sidecars.docker.settings import PolicySettings
from tests.unit.docker_sidecar_fake_engine import FakeEngine
from tests.unit.docker_sidecar_runtime_support import engine, rt, within  # noqa: F401 - fixtures by name


def container(name: str = "main", **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "img", "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File", **fields}


def pod_request(*containers: dict[str, Any], restart: str = "Never") -> wire.PodCreateRequest:
    spec = {"containers": list(containers), "restartPolicy": restart}
    return wire.PodCreateRequest.model_validate({"pod": {"metadata": {"name": "web", "namespace": "ns", "uid": "u-1"}, "spec": spec}})


async def settle(pod: PodState) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await within(5, lambda: pod.task is None or pod.task.done())


async def run_to_end(rt: Runtime, engine: FakeEngine, *containers: dict[str, Any],
                     code: int = 0, files: dict[str, bytes] | None = None, logs: dict[str, bytes] | None = None,
                     restart: str = "Never") -> PodState:
    await rt.create(pod_request(*containers, restart=restart))
    pod = rt.table.get("u-1")
    assert pod is not None
    await settle(pod)
    for slot in pod.slots.values():
        run = slot.latest
        assert run is not None
        path = slot.spec.terminationMessagePath or "/dev/termination-log"
        if files and slot.name in files:
            engine.file_data[(run.id, path)] = files[slot.name]
        if logs and slot.name in logs:
            engine.log_data[run.id] = logs[slot.name]
        engine.exit(run.id, code)
        pod.stale.add(run.id)
    rt.worker.kick(pod)
    await settle(pod)
    return pod


def terminated(rt: Runtime, pod: PodState, name: str = "main") -> wire.ContainerStateTerminated:
    st = next(c for c in rt.worker.status_of(pod).containerStatuses if c.name == name)
    assert st.state.terminated is not None
    return st.state.terminated


async def test_every_run_gets_a_message_file_of_its_own_at_the_path(rt: Runtime, engine: FakeEngine) -> None:
    await rt.create(pod_request(container(), container("other", terminationMessagePath="/tmp/msg")))
    pod = rt.table.get("u-1")
    assert pod is not None and pod.locations.disk is not None
    disk = pod.locations.disk[1]
    infra = engine.files[pod.infra_id]  # type: ignore[index]
    for name in ("main.0", "main.1", "other.0", "other.1"):
        assert f"/kod/disk/_termination/{name}" in infra
    mounts = {c["Labels"][naming.ROLE] + "/" + c["Name"]: c["Mounts"] for c in engine.of_pod("u-1")}
    binds = [m for ms in mounts.values() for m in ms if m.get("Target") in ("/dev/termination-log", "/tmp/msg")]
    assert sorted((m["Source"], m["Target"]) for m in binds) == [
        (f"{disk}/_termination/main.0", "/dev/termination-log"), (f"{disk}/_termination/other.0", "/tmp/msg")]


def test_runs_alternate_between_two_files_and_a_reused_one_is_emptied_first() -> None:
    c = wire.Container.model_validate(container())
    sources = [termination.mount(c, n, "/v")["Source"] for n in range(4)]  # type: ignore[index]
    assert sources == ["/v/_termination/main.0", "/v/_termination/main.1"] * 2
    assert termination.mount(wire.Container(name="x", image="i"), 0, "/v") is None
    with tarfile.open(fileobj=io.BytesIO(termination.empty_file_tar("disk/_termination/main.0"))) as tar:
        (member,) = tar.getmembers()
        assert member.name == "disk/_termination/main.0" and member.size == 0 and member.mode == 0o666


def test_a_pod_without_message_paths_plans_no_message_files() -> None:
    spec = wire.PodSpec.model_validate({"containers": [{"name": "m", "image": "i"}]})
    assert termination.VOLUME not in volumes.plan(spec, PolicySettings())
    spec = wire.PodSpec.model_validate({"containers": [container()]})
    assert volumes.plan(spec, PolicySettings())[termination.VOLUME].kind == "disk"


async def test_the_file_becomes_the_terminated_message_its_last_4_kib(rt: Runtime, engine: FakeEngine) -> None:
    pod = await run_to_end(rt, engine, container(), files={"main": b"bye from file"})
    assert terminated(rt, pod).message == "bye from file"
    await rt.delete("ns", "web", uid="u-1", grace=0)
    big = b"a" * 5000 + b"the end"
    pod = await run_to_end(rt, engine, container(), files={"main": big})
    assert terminated(rt, pod).message == big[-4096:].decode()


async def test_fallback_to_logs_takes_the_last_80_lines_of_a_failed_run(rt: Runtime, engine: FakeEngine) -> None:
    lines = b"".join(b"line %d\n" % i for i in range(1, 101))
    fallback = container(terminationMessagePolicy="FallbackToLogsOnError")
    pod = await run_to_end(rt, engine, fallback, code=2, logs={"main": lines})
    assert terminated(rt, pod).message == "".join(f"line {i}\n" for i in range(21, 101))
    await rt.delete("ns", "web", uid="u-1", grace=0)
    long_lines = b"".join(b"%04d %s\n" % (i, b"x" * 95) for i in range(100))
    pod = await run_to_end(rt, engine, fallback, code=1, logs={"main": long_lines})
    assert terminated(rt, pod).message == long_lines[-2048:].decode()


@pytest.mark.parametrize(("code", "file", "expected"), [
    (0, b"", None),  # it succeeded: no logs
    (1, b"from the file", "from the file"),  # a message written wins over the logs
])
async def test_fallback_to_logs_is_only_for_a_failed_run_that_left_no_message(
    rt: Runtime, engine: FakeEngine, code: int, file: bytes, expected: str | None
) -> None:
    fallback = container(terminationMessagePolicy="FallbackToLogsOnError")
    pod = await run_to_end(rt, engine, fallback, code=code, files={"main": file}, logs={"main": b"a log line\n"})
    assert terminated(rt, pod).message == expected


async def test_the_pods_messages_share_12_kib(rt: Runtime, engine: FakeEngine) -> None:
    names = ["a", "b", "c", "d"]
    pod = await run_to_end(rt, engine, *(container(n) for n in names), files={n: n.encode() * 4096 for n in names})
    for n in names:
        assert terminated(rt, pod, n).message == n * 3072  # 12 KiB / 4 containers


async def test_a_restarted_runs_message_is_in_last_state(rt: Runtime, engine: FakeEngine) -> None:
    pod = await run_to_end(rt, engine, container(), code=1, files={"main": b"first run"}, restart="Always")
    await within(5, lambda: len(list(pod.runs())) == 2)
    await settle(pod)
    st = rt.worker.status_of(pod).containerStatuses[0]
    assert st.lastState.terminated is not None and st.lastState.terminated.message == "first run"
