"""Status from Docker state, as the kubelet computes it: phases, reasons, restarts (pure)."""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kod import wire
from sidecars.docker import logs, status
from sidecars.docker.record import PodRecord
from sidecars.docker.settings import RestartSettings
from sidecars.docker.state import PodState, Run

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
RESTART = RestartSettings()


def make_pod(policy: str = "Always", init: int = 0, mains: int = 1, **spec: Any) -> PodState:
    s = {
        "restartPolicy": policy,
        "initContainers": [{"name": f"i{k}", "image": "img"} for k in range(init)],
        "containers": [{"name": f"c{k}", "image": "img"} for k in range(mains)],
        **spec,
    }
    rec = PodRecord(pod=wire.Pod.model_validate({"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": s}))
    pod = PodState.new(rec, T0, {})
    pod.infra_id = "infra"
    pod.infra = Run(id="infra", attempt=0, state="running", started_at=T0, ip="172.17.0.9")
    pod.populated = True
    return pod


def run(attempt: int = 0, state: str = "exited", code: int = 0, *, start: int = 1, end: int | None = 2,
        oom: bool = False, error: str = "") -> Run:
    return Run(
        id=f"id{attempt}", attempt=attempt, state=state, exit_code=code, oom_killed=oom, error=error,
        started_at=T0 + timedelta(seconds=start) if state != "created" else None,
        finished_at=T0 + timedelta(seconds=end) if end is not None and state != "running" else None,
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_fresh_pod_is_pending_with_container_creating() -> None:
    st = status.compute(make_pod(), at(0), RESTART)
    assert st.phase == "Pending"
    assert st.containerStatuses[0].state.waiting.reason == "ContainerCreating"  # type: ignore[union-attr]
    assert st.podIP == "172.17.0.9" and st.startTime == T0


def test_running_then_succeeded_and_failed() -> None:
    pod = make_pod("Never")
    pod.slots["c0"].runs[0] = run(state="running")
    st = status.compute(pod, at(1), RESTART)
    assert st.phase == "Running" and st.containerStatuses[0].ready and st.containerStatuses[0].started
    pod.slots["c0"].runs[0] = run(code=0)
    st = status.compute(pod, at(3), RESTART)
    term = st.containerStatuses[0].state.terminated
    assert st.phase == "Succeeded" and term is not None and term.reason == "Completed" and term.exitCode == 0
    pod.slots["c0"].runs[0] = run(code=3)
    st = status.compute(pod, at(3), RESTART)
    term = st.containerStatuses[0].state.terminated
    assert st.phase == "Failed" and term is not None and term.exitCode == 3 and term.reason == "Error"


def test_oom_killed_and_start_error_reasons() -> None:
    pod = make_pod("Never")
    pod.slots["c0"].runs[0] = run(code=137, oom=True)
    term = status.compute(pod, at(3), RESTART).containerStatuses[0].state.terminated
    assert term is not None and term.reason == "OOMKilled" and term.exitCode == 137 and term.signal == 9
    pod.slots["c0"].runs[0] = run(state="created", error='exec: "nope": executable file not found in $PATH')
    st = status.compute(pod, at(3), RESTART)
    term = st.containerStatuses[0].state.terminated
    assert st.phase == "Failed" and term is not None and term.reason == "StartError" and term.exitCode == 128
    assert "executable file not found" in (term.message or "")


def test_crash_loop_back_off_with_restart_count_and_last_state() -> None:
    pod = make_pod("Always")
    slot = pod.slots["c0"]
    slot.runs[0] = run(0, code=1, start=1, end=2)
    slot.runs[1] = run(1, code=1, start=3, end=4)
    st = status.compute(pod, at(5), RESTART).containerStatuses[0]
    assert st.restartCount == 1
    assert st.state.waiting is not None and st.state.waiting.reason == "CrashLoopBackOff"
    assert "back-off 10s" in (st.state.waiting.message or "")
    assert st.lastState.terminated is not None and st.lastState.terminated.exitCode == 1
    assert status.compute(pod, at(5), RESTART).phase == "Running"
    # After the back-off the restart is due.
    assert status.restart_due(slot.runs[1], RESTART) == at(14)


@pytest.mark.parametrize(
    ("attempt", "ran", "delay"),
    [(0, 1, 0), (1, 1, 10), (2, 1, 20), (3, 1, 40), (10, 1, 300), (4, 700, 0)],
)
def test_back_off_doubles_to_five_minutes_and_resets_after_a_long_run(attempt, ran, delay) -> None:
    assert status.restart_delay(run(attempt, code=1, start=0, end=ran), RESTART) == delay


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False), ("OnFailure", 2, True),
     ("Never", 0, False), ("Never", 1, False)],
)
def test_restart_policy(policy, code, restart) -> None:
    pod = make_pod(policy)
    assert status.restart_wanted(policy, pod.slots["c0"], run(code=code)) is restart


def test_init_containers_gate_the_main_ones() -> None:
    pod = make_pod("Never", init=2)
    st = status.compute(pod, at(0), RESTART)
    assert st.phase == "Pending"
    assert [c.state.waiting.reason for c in st.initContainerStatuses] == ["PodInitializing"] * 2  # type: ignore[union-attr]
    assert st.containerStatuses[0].state.waiting.reason == "PodInitializing"  # type: ignore[union-attr]
    pod.slots["i0"].runs[0] = run(code=0)
    pod.slots["i1"].runs[0] = run(state="running")
    assert status.compute(pod, at(3), RESTART).phase == "Pending"
    pod.slots["i1"].runs[0] = run(code=5)
    st = status.compute(pod, at(3), RESTART)
    assert st.phase == "Failed"  # an init container failed and the pod never restarts
    assert status.init_failed(pod)
    # Its infra container is then stopped: still Failed for the init container, not a dead sandbox.
    pod.infra = Run(id="infra", attempt=0, state="exited", started_at=T0, finished_at=at(4))
    st = status.compute(pod, at(5), RESTART)
    assert st.phase == "Failed" and st.reason is None


def test_failed_init_container_restarts_unless_never() -> None:
    pod = make_pod("OnFailure", init=1)
    pod.slots["i0"].runs[0] = run(code=1)
    st = status.compute(pod, at(3), RESTART)
    assert st.phase == "Pending"
    assert st.initContainerStatuses[0].lastState.terminated is not None


def test_restartable_init_container_keeps_running_beside_the_main_ones() -> None:
    pod = make_pod("Never", init=0)
    pod.record.pod.spec.initContainers = [wire.Container(name="side", image="img", restartPolicy="Always")]
    pod = PodState.new(pod.record, T0, {})
    pod.infra_id, pod.infra, pod.populated = "infra", Run(id="infra", attempt=0, state="running", started_at=T0), True
    pod.slots["side"].runs[0] = run(state="running")
    pod.slots["c0"].runs[0] = run(state="running")
    assert status.compute(pod, at(3), RESTART).phase == "Running"
    pod.slots["c0"].runs[0] = run(code=0)
    assert status.main_done(pod)
    pod.slots["side"].runs[0] = run(code=143, end=3)
    assert status.compute(pod, at(4), RESTART).phase == "Succeeded"


def test_active_deadline_fails_the_pod() -> None:
    pod = make_pod("Always", activeDeadlineSeconds=30)
    pod.slots["c0"].runs[0] = run(state="running")
    assert status.compute(pod, at(29), RESTART).phase == "Running"
    # Past it, but the container still runs (being stopped): the kubelet reports no terminal
    # phase before its containers stopped; nor does a run stopped but not inspected since.
    assert status.compute(pod, at(31), RESTART).phase == "Running"
    pod.slots["c0"].runs[0] = run(code=137, end=32)
    pod.stale.add(pod.slots["c0"].runs[0].id)
    assert status.compute(pod, at(32), RESTART).phase == "Running"
    pod.stale.clear()
    st = status.compute(pod, at(33), RESTART)
    assert st.phase == "Failed" and st.reason == status.DEADLINE_EXCEEDED
    done = make_pod("Never", activeDeadlineSeconds=30)
    done.slots["c0"].runs[0] = run(code=0, end=10)
    assert status.compute(done, at(60), RESTART).phase == "Succeeded"


def test_infra_container_dying_fails_the_pod_but_stopping_it_after_the_end_does_not() -> None:
    pod = make_pod("Always")
    pod.slots["c0"].runs[0] = run(state="running")
    pod.infra = Run(id="infra", attempt=0, state="exited", exit_code=137, started_at=T0, finished_at=at(5))
    assert status.compute(pod, at(6), RESTART).phase == "Running"  # until its container was killed
    pod.slots["c0"].runs[0] = run(code=137, end=6)
    st = status.compute(pod, at(6), RESTART)
    assert st.phase == "Failed" and st.reason == status.SANDBOX_DIED and "delete it" in (st.message or "")
    done = make_pod("Never")
    done.slots["c0"].runs[0] = run(code=0, end=4)
    done.infra = Run(id="infra", attempt=0, state="exited", started_at=T0, finished_at=at(5))
    st = status.compute(done, at(6), RESTART)
    assert st.phase == "Succeeded" and st.reason is None
    gone = make_pod("Always")
    gone.infra = None
    assert status.compute(gone, at(1), RESTART).reason == status.SANDBOX_DIED


@pytest.mark.parametrize(
    ("policy", "main", "phase"),
    [
        ("Always", [("running", 0)], "Running"),
        ("Never", [("running", 0), ("exited", 1)], "Running"),
        ("Never", [("exited", 0), ("exited", 1)], "Failed"),
        ("OnFailure", [("exited", 0), ("exited", 0)], "Succeeded"),
        ("Always", [("exited", 0)], "Running"),
    ],
)
def test_kubelet_phase_table(policy, main, phase) -> None:
    spec = wire.PodSpec.model_validate({"restartPolicy": policy, "containers": [{"name": f"c{i}", "image": "i"} for i in range(len(main))]})
    statuses = []
    for i, (state, code) in enumerate(main):
        st = wire.ContainerStatus(name=f"c{i}")
        if state == "running":
            st.state = wire.ContainerState(running=wire.ContainerStateRunning())
        elif policy == "Always" or (policy == "OnFailure" and code):
            st.state = wire.ContainerState(waiting=wire.ContainerStateWaiting(reason="CrashLoopBackOff"))
            st.lastState = wire.ContainerState(terminated=wire.ContainerStateTerminated(exitCode=code))
        else:
            st.state = wire.ContainerState(terminated=wire.ContainerStateTerminated(exitCode=code))
        statuses.append(st)
    assert status.kubelet_phase(spec, [], statuses) == phase


# ------------------------------------------------------------------ logs


async def _chunks(*parts: bytes):
    for p in parts:
        yield p


def _frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


async def test_log_frames_are_demultiplexed_across_chunk_boundaries() -> None:
    raw = _frame(1, b"out 1\n") + _frame(2, b"err 1\n") + _frame(1, b"out 2\n")
    parts = [raw[:3], raw[3:11], raw[11:20], raw[20:]]
    got = b"".join([c async for c in logs.demux(_chunks(*parts), tty=False)])
    assert got == b"out 1\nerr 1\nout 2\n"
    tty = b"".join([c async for c in logs.demux(_chunks(b"raw", b"", b" bytes"), tty=True)])
    assert tty == b"raw bytes"


async def test_limit_bytes_cuts_the_stream() -> None:
    got = b"".join([c async for c in logs.limit(_chunks(b"abc", b"def", b"ghi"), 5)])
    assert got == b"abcde"


def test_log_options_become_engine_parameters() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    params = logs.docker_params(wire.LogOptions(follow=True, timestamps=True, tailLines=10, sinceSeconds=60), now)
    assert params == {"stdout": "1", "stderr": "1", "follow": "1", "timestamps": "1", "tail": "10",
                      "since": f"{now.timestamp() - 60:.9f}"}
    since = logs.docker_params(wire.LogOptions(sinceTime=now))
    assert float(since["since"]) == now.timestamp()


def test_inspect_data_becomes_a_run_and_never_ends_before_it_starts() -> None:
    data = {
        "Id": "abc",
        "Image": "sha256:img",
        "State": {"Status": "exited", "ExitCode": 0, "OOMKilled": False, "Error": "",
                  "StartedAt": "2026-01-01T12:00:01.500000000Z", "FinishedAt": "2026-01-01T12:00:01.499000000Z"},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.3"}}},
    }
    r = Run.from_inspect(data, attempt=2)
    assert r.attempt == 2 and r.finished and r.ip == "172.17.0.3" and r.image_id == "sha256:img"
    assert r.finished_at == r.started_at
    never = Run.from_inspect({"Id": "x", "State": {"Status": "created", "StartedAt": "0001-01-01T00:00:00Z"}})
    assert never.pending_start and never.started_at is None
