"""The sidecar's PodStatus becomes the status a kubelet would write: phase, the five conditions,
container states with exit codes, IPs and times; unchanged statuses are not written again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kod import wire
from vk_bridge.status import desired_status, failed_status, status_patch, waiting_status

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
T1 = datetime(2026, 1, 2, 3, 5, 0, tzinfo=UTC)


def api_pod(init: int = 0, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {
            "initContainers": [{"name": f"init{i}", "image": "busybox"} for i in range(init)],
            "containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "nginx"}],
        },
        "status": status or {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }


def running(name: str, ready: bool = True) -> wire.ContainerStatus:
    return wire.ContainerStatus(
        name=name, ready=ready, started=True, image="busybox", imageID="sha256:1", containerID="abc123",
        state=wire.ContainerState(running=wire.ContainerStateRunning(startedAt=T0)),
    )


def terminated(name: str, code: int, reason: str = "Completed") -> wire.ContainerStatus:
    return wire.ContainerStatus(
        name=name, image="busybox", containerID="docker://ff",
        state=wire.ContainerState(terminated=wire.ContainerStateTerminated(exitCode=code, reason=reason, startedAt=T0, finishedAt=T1)),
    )


def remote(phase: str = "Running", **kw: Any) -> wire.PodStatus:
    return wire.PodStatus(namespace="ns", name="p", uid="u1", phase=phase, podIP="172.17.0.3", startTime=T0, **kw)  # type: ignore[arg-type]


def conds(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_running_pod_is_ready_with_every_condition_true() -> None:
    st = desired_status(api_pod(), remote(containerStatuses=[running("a"), running("b")]), host_ips=["10.0.0.5"], now=T1)
    assert st["phase"] == "Running"
    assert conds(st) == {"PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True", "ContainersReady": "True", "PodScheduled": "True"}
    assert st["podIP"] == "172.17.0.3" and st["podIPs"] == [{"ip": "172.17.0.3"}]
    assert st["hostIP"] == "10.0.0.5" and st["hostIPs"] == [{"ip": "10.0.0.5"}]
    assert st["startTime"] == "2026-01-02T03:04:05Z"
    a = st["containerStatuses"][0]
    assert a["containerID"] == "docker://abc123" and a["state"] == {"running": {"startedAt": "2026-01-02T03:04:05Z"}}
    # The scheduler's condition keeps its time; the new ones start now.
    times = {c["type"]: c["lastTransitionTime"] for c in st["conditions"]}
    assert times["PodScheduled"] == "2026-01-01T00:00:00Z" and times["Ready"] == "2026-01-02T03:05:00Z"


def test_unready_container_makes_the_pod_not_ready_with_the_kubelets_message() -> None:
    st = desired_status(api_pod(), remote(containerStatuses=[running("a"), running("b", ready=False)]), host_ips=["h"])
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    assert ready["message"] == "containers with unready status: [b]"


def test_an_unready_sidecar_init_container_makes_the_pod_not_ready_as_on_a_kubelet() -> None:
    pod = api_pod(init=1)
    pod["spec"]["initContainers"][0]["restartPolicy"] = "Always"
    st = desired_status(pod, remote(initContainerStatuses=[running("init0", ready=False)],
                                    containerStatuses=[running("a"), running("b", ready=False)]), host_ips=["h"])
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["message"] == "containers with unready status: [init0 b]"
    st = desired_status(pod, remote(initContainerStatuses=[running("init0")], containerStatuses=[running("a"), running("b")]),
                        host_ips=["h"])
    assert conds(st)["Ready"] == conds(st)["ContainersReady"] == "True"


@pytest.mark.parametrize(("code", "phase", "reason"), [(0, "Succeeded", "Completed"), (3, "Failed", "Error"), (137, "Failed", "OOMKilled")])
def test_finished_pods_carry_exit_codes_and_reasons(code: int, phase: str, reason: str) -> None:
    st = desired_status(
        api_pod(), remote(phase, containerStatuses=[terminated("a", code, reason), terminated("b", 0)]), host_ips=["h"]
    )
    assert st["phase"] == phase
    term = st["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["finishedAt"]) == (code, reason, "2026-01-02T03:05:00Z")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    # The kubelet's words (kod-worker, tests/e2e/test_differential.py): PodCompleted for a pod that
    # succeeded, PodFailed for one that failed.
    assert ready["status"] == "False" and ready["reason"] == ("PodCompleted" if phase == "Succeeded" else "PodFailed")


def test_init_containers_gate_initialized() -> None:
    pod = api_pod(init=2)
    st = desired_status(pod, remote("Pending", initContainerStatuses=[terminated("init0", 0), running("init1")]), host_ips=["h"])
    init = next(c for c in st["conditions"] if c["type"] == "Initialized")
    assert init["status"] == "False" and init["message"] == "containers with incomplete status: [init1]"
    assert [s["state"] for s in st["containerStatuses"]] == [{"waiting": {"reason": "PodInitializing"}}] * 2
    st = desired_status(pod, remote(initContainerStatuses=[terminated("init0", 0), terminated("init1", 0)],
                                    containerStatuses=[running("a"), running("b")]), host_ips=["h"])
    assert conds(st)["Initialized"] == "True"


def test_a_terminal_phase_is_never_left() -> None:
    pod = api_pod(status={"phase": "Succeeded"})
    st = desired_status(pod, remote("Running", containerStatuses=[running("a"), running("b")]), host_ips=["h"])
    assert st["phase"] == "Succeeded"


def test_refused_pod_is_failed_with_the_sidecars_reason() -> None:
    st = failed_status(api_pod(), reason="Forbidden", message="privileged containers are not allowed", host_ips=["h"])
    assert st["phase"] == "Failed" and st["reason"] == "Forbidden"
    assert st["message"] == "privileged containers are not allowed"
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "Forbidden"}}


def test_missing_secret_shows_create_container_config_error() -> None:
    st = waiting_status(api_pod(), reason="CreateContainerConfigError", message='secret "x" not found', host_ips=["h"])
    assert st["phase"] == "Pending"
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "x" not found'}}


def test_patch_only_when_something_changed_and_with_a_uid_precondition() -> None:
    pod = api_pod()
    st = desired_status(pod, remote(containerStatuses=[running("a"), running("b")]), host_ips=["h"], now=T1)
    patch = status_patch(pod, st)
    assert patch is not None and patch["metadata"] == {"uid": "u1"}
    # What the API server would store (nulls dropped) compares equal: no second write.
    stored = {k: v for k, v in st.items() if v is not None}
    pod_after = {**pod, "status": stored}
    again = desired_status(pod_after, remote(containerStatuses=[running("a"), running("b")]), host_ips=["h"], now=datetime.now(UTC))
    assert status_patch(pod_after, again) is None


def test_conditions_set_by_others_are_kept() -> None:
    pod = api_pod(status={"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "True"}, {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]})
    st = desired_status(pod, remote(containerStatuses=[running("a"), running("b")]), host_ips=["h"])
    assert conds(st)["DisruptionTarget"] == "True"
