"""Chaos on the desktop stack: kill -9 of its processes (all three at once, and each alone) while a
Deployment on the virtual node scales from 20 to 40 replicas, then the stack started again (what
`python -m localenv up` does). Whatever point of its creation each new pod had reached when the
processes died, every pod of the Deployment reaches Running; the pods that ran before keep their
containers; Docker holds exactly one infra container and one container per pod, and nothing of a
pod that is not in the API.

The burst runs on the private crash stack (`crash_node`), so nothing here disturbs the shared
virtual node. Each run deletes its Deployment and waits for its containers to go, so the next run
starts on an idle node."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from kod import labels
from localenv import desktop_stack
from sidecars.docker import naming
from tests.fixtures.virtual_node import VirtualNode

#: Seconds one run may take, setup and teardown included (the first run also starts the private
#: stack); healthy runs take 20-30 s plus the deletion of their pods on 2 cores.
RUN_TIMEOUT = 300
BEFORE, AFTER = 20, 40
#: Kill once this many of the new pods are in the middle of their set-up at the same moment (an
#: infra container, no container yet): the burst is then under way at every stage, from "not sent
#: yet" through "contents half written" to "containers started".
KILL_WHEN_SETTING_UP = 3
APP = "chaos"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(RUN_TIMEOUT)]


def _deployment(vn: VirtualNode, replicas: int) -> dict[str, Any]:
    # `sleep` as PID 1 ignores SIGTERM; with the trap the container stops at once on delete.
    template = vn.pod(APP, [{"name": "main", "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]}])
    template["spec"]["restartPolicy"] = "Always"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": APP}},
            "template": {"metadata": {"labels": {"app": APP}}, "spec": template["spec"]},
        },
    }


def _pods(vn: VirtualNode, ns: str) -> list[dict[str, Any]]:
    return list(vn.cluster.kubectl_json("get", "pods", "-n", ns, "-l", f"app={APP}")["items"])


def _running(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return (
        not (pod["metadata"].get("deletionTimestamp"))
        and st.get("phase") == "Running"
        and bool(st.get("containerStatuses"))
        and all(c.get("ready") for c in st["containerStatuses"])
    )


def _wait_all_running(vn: VirtualNode, ns: str, count: int, timeout: float) -> list[dict[str, Any]]:
    """Wait until the Deployment has exactly `count` pods and all run; fails naming the pods that
    do not, with their last status."""
    deadline = time.monotonic() + timeout
    pods: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        pods = _pods(vn, ns)
        if len(pods) == count and all(_running(p) for p in pods):
            return pods
        time.sleep(0.5)
    stuck = {
        p["metadata"]["name"]: {
            "phase": (p.get("status") or {}).get("phase"),
            "containers": [c.get("state") for c in (p.get("status") or {}).get("containerStatuses", [])],
        }
        for p in pods
        if not _running(p)
    }
    raise AssertionError(
        f"{len(pods)} pods, {len(pods) - len(stuck)} running, after {timeout:.0f} s (want {count} running); "
        f"not running:\n{json.dumps(stuck, indent=1)[:4000]}"
    )


def _docker(vn: VirtualNode, ns: str, *extra: str) -> list[dict[str, Any]]:
    """This namespace's containers of the crash stack's sidecar, found by the sidecar's labels
    (one list call: the engine is busy with the burst, so no inspect per container)."""
    flt = [f"{naming.SIDECAR}={vn.stack.settings.sidecar_name}", f"{labels.D_POD_NAMESPACE}={ns}", *extra]
    return list(vn.docker.api.containers(all=True, filters={"label": flt}))


def _wait(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout:.0f} s"
        time.sleep(poll)


def _setting_up(vn: VirtualNode, ns: str, old: set[str]) -> int:
    """How many new pods have an infra container but no container yet (one Docker list call)."""
    roles: dict[str, set[str]] = {}
    for c in _docker(vn, ns):
        roles.setdefault(c["Labels"].get(labels.D_POD_UID, ""), set()).add(c["Labels"].get(naming.ROLE, ""))
    return sum(1 for uid, r in roles.items() if uid not in old and r == {"infra"})


def _kill_at_once(vn: VirtualNode, victims: tuple[str, ...]) -> None:
    """SIGKILL to every victim before waiting for any: none of them sees another die first (a
    sidecar that outlives interlink by a few milliseconds rolls back the creates cut off)."""
    pids = {name: desktop_stack.pid(name, vn.stack) for name in victims}
    for name, pid in pids.items():
        assert pid is not None, f"{name} was not running"
        os.kill(pid, signal.SIGKILL)
    for name in victims:
        desktop_stack.kill(name, stack=vn.stack)  # waits until it is gone (and reaps it)
        assert desktop_stack.pid(name, vn.stack) is None, f"{name} survived SIGKILL"


def _ids(pods: list[dict[str, Any]]) -> dict[str, str]:
    return {p["metadata"]["uid"]: p["status"]["containerStatuses"][0]["containerID"] for p in pods}


VICTIMS = {"all-three": ("sidecar", "interlink", "vk"), "vk": ("vk",), "interlink": ("interlink",),
           "sidecar": ("sidecar",)}


@pytest.mark.parametrize("victims", list(VICTIMS.values()), ids=list(VICTIMS))
def test_kill_9_mid_burst_every_pod_runs_with_no_duplicate_or_orphan(
    owner_namespace: str, vnode_processes: VirtualNode, victims: tuple[str, ...]
) -> None:
    # The owner's namespace: the only one the node runs pods of (its cleanup runs after the
    # node's processes are back).
    vn, ns = vnode_processes, owner_namespace
    vn.create(ns, _deployment(vn, BEFORE))
    try:
        before = _wait_all_running(vn, ns, BEFORE, timeout=120)

        old = {p["metadata"]["uid"] for p in before}
        vn.cluster.kubectl("scale", "deployment", APP, "-n", ns, f"--replicas={AFTER}")
        # Not a sleep: wait (looking at Docker every 20 ms) until new pods are being set up.
        _wait(lambda: _setting_up(vn, ns, old) >= KILL_WHEN_SETTING_UP, 60, "the burst reaching the sidecar",
              poll=0.02)
        _kill_at_once(vn, victims)
        at_kill = len(_docker(vn, ns, f"{naming.ROLE}=infra"))
        vn.ensure_all()  # what `python -m localenv up` does for the stack: start each, wait ready
        print(f"\nkilled {'+'.join(victims)} with {at_kill - BEFORE} of {AFTER - BEFORE} new pods begun in Docker")

        after = _wait_all_running(vn, ns, AFTER, timeout=150)
        uids = {p["metadata"]["uid"]: p for p in after}
        # The pods that ran before the crash were adopted, not restarted.
        assert {u: c for u, c in _ids(after).items() if u in _ids(before)} == _ids(before)
        assert all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in after)

        # Docker: one infra container and one container per pod, nothing of a pod not in the API
        # (a crashed create's leftovers are swept by the sidecar; give it a moment).
        def clean() -> bool:
            return {c["Labels"].get(labels.D_POD_UID) for c in _docker(vn, ns)} <= set(uids)

        _wait(clean, 60, "no container of a pod missing from the API")
        containers = _docker(vn, ns)
        infra = Counter(c["Labels"][labels.D_POD_UID] for c in containers if c["Labels"].get(naming.ROLE) == "infra")
        mains = Counter(c["Labels"][labels.D_POD_UID] for c in containers if c["Labels"].get(naming.ROLE) == "main")
        assert set(infra) == set(uids) and set(infra.values()) == {1}, f"infra containers per pod: {infra}"
        assert set(mains) == set(uids) and set(mains.values()) == {1}, f"containers per pod: {mains}"
        by_id = {c["Id"]: c for c in containers}
        for uid, cid in _ids(after).items():
            found = by_id.get(cid.removeprefix("docker://"))
            assert found is not None and found["Labels"][labels.D_POD_UID] == uid and found["State"] == "running", (
                f"pod {uids[uid]['metadata']['name']}: its status names {cid}, not a running container of it"
            )
    finally:
        failing = sys.exc_info()[1] is not None
        vn.ensure_all()
        vn.cluster.kubectl("delete", "deployment", APP, "-n", ns, "--ignore-not-found", "--wait=false", check=False)
        try:
            _wait(lambda: not _docker(vn, ns), 120, "the Deployment's containers removed")
        except AssertionError:
            if not failing:  # else the run's own failure is the one to report
                raise
