"""Reading a pod's state: running, finished, and failures that will not fix themselves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cloudify.podwatch import PodState, SessionPods, wait_for
from kod import errors


def pod(phase: str, *, waiting: str | None = None, running: bool = False, exit_code: int | None = None,
        conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if waiting:
        state["waiting"] = {"reason": waiting, "message": f"{waiting} details"}
    if running:
        state["running"] = {"startedAt": "now"}
    if exit_code is not None:
        state["terminated"] = {"exitCode": exit_code}
    return {
        "metadata": {"name": "p", "uid": "u", "labels": {}},
        "spec": {"nodeName": "n1"},
        "status": {"phase": phase, "conditions": conditions or [],
                   "containerStatuses": [{"name": "app", "image": "kod/firefox:0.1.0", "state": state}]},
    }


def feed(state: PodState, *pods: dict[str, Any]) -> PodState:
    for p in pods:
        SessionPods._update(state, "MODIFIED", p)
    return state


async def test_running_then_finished_with_an_exit_code() -> None:
    s = feed(PodState("app"), pod("Pending", waiting="ContainerCreating"), pod("Running", running=True))
    assert s.running.is_set() and not s.finished.is_set() and s.failure is None
    feed(s, pod("Succeeded", exit_code=0))
    assert s.finished.is_set() and s.exit_code() == 0 and s.node == "n1"


@pytest.mark.parametrize("reason", ["ErrImageNeverPull", "ImagePullBackOff", "CreateContainerConfigError"])
async def test_a_pod_that_cannot_start_fails_at_once_with_its_reason(reason: str) -> None:
    s = feed(PodState("app"), pod("Pending", waiting=reason))
    with pytest.raises(errors.Unavailable, match=reason):
        await wait_for(s, s.running, timeout=30, what="the app pod to run")


async def test_a_stuck_pod_times_out_saying_why() -> None:
    s = feed(PodState("app"), pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                          "message": "0/2 nodes are available: node(s) had untolerated taint"}]))
    with pytest.raises(errors.Unavailable, match="untolerated taint"):
        await wait_for(s, s.running, timeout=0.05, what="the app pod to run")
    assert "does not exist yet" in PodState("viewer").describe()


async def test_a_deleted_pod_counts_as_finished() -> None:
    s = PodState("viewer")
    SessionPods._update(s, "DELETED", pod("Running", running=True))
    assert s.finished.is_set() and s.gone
    await asyncio.wait_for(s.finished.wait(), 1)


@pytest.mark.parametrize(("code", "fragment"), [(3, "refused the session's VNC password"), (4, "SSH to the app failed"),
                                                (5, "could not reach the app"), (2, "cannot open your X display"),
                                                (9, "exit code 9")])
def test_viewer_exit_codes_are_explained_with_its_log(code: int, fragment: str) -> None:
    from cloudify.viewers.base import viewer_failure

    assert viewer_failure(0, "whatever") is None
    err = viewer_failure(code, "line 1\nkod-viewer: error: the reason\n")
    assert err is not None and fragment in err.message and "kod-viewer: error: the reason" in err.message
    assert err.hint
