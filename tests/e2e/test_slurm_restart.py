"""kill -9 of the Slurm sidecar while 20 pods of the HPC node run, then a restart: the new process
adopts every job (by its comment), statuses converge, and no job is duplicated or left behind."""

from __future__ import annotations

import time

import pytest

from tests.e2e.slurm_support import hpc_node, jobs, wait_for  # noqa: F401 - hpc_node is a fixture
from tests.fixtures.virtual_node import RUN_LABEL, VirtualNode

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

PODS = 20
#: How long the short pods run: long enough for all 20 jobs to be seen Running first. On a loaded
#: machine 20 jobs started at once reach Running over more than 25 s (CI: the first short pods
#: had ended before the last ones were Running, so "all Running" never held).
SHORT_SECONDS = 60


@pytest.mark.timeout(400)
def test_kill_9_of_the_sidecar_during_20_pods_converges_without_duplicates_or_orphans(
        hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    # Half end while the sidecar is dead (their end must still be reported), half keep running.
    short = {f"crash-{i}" for i in range(0, PODS, 2)}
    objects = [hpc_node.pod(f"crash-{i}", [{"name": "main", "command": ["sh", "-c", f"sleep {SHORT_SECONDS}; echo done" if f"crash-{i}" in short
                                                                       else "sleep 3600"]}],
                            terminationGracePeriodSeconds=1) for i in range(PODS)]
    hpc_node.create(ns, *objects)

    def pods() -> dict[str, dict]:
        items = hpc_node.cluster.kubectl_json("get", "pods", "-n", ns, "-l", f"{RUN_LABEL[0]}={RUN_LABEL[1]}")["items"]
        return {p["metadata"]["name"]: p for p in items if p["metadata"]["name"].startswith("crash-")}

    def not_running() -> dict[str, str | None]:
        now = pods()
        return {n: now[n]["status"].get("phase") if n in now else None for n in (f"crash-{i}" for i in range(PODS))
                if n not in now or now[n]["status"].get("phase") != "Running"}

    left = not_running()
    deadline = time.monotonic() + 180
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = not_running()
    assert not left, f"not all 20 pods Running within 180 s; the others' phases: {left}"
    uids = {name: p["metadata"]["uid"] for name, p in pods().items()}
    hpc_node.kill("sidecar")
    short_uids = {uids[n] for n in short}
    # The short pods end while the sidecar is dead: the new process must find out from Slurm.
    wait_for(lambda: not [j for j in jobs() if j.pod_uid in short_uids], SHORT_SECONDS + 60, "the short pods' jobs ended",
             interval=0.5)
    hpc_node.restart("sidecar")
    restarted = time.monotonic()

    def wrong() -> dict[str, str]:
        now = pods()
        return {n: p["status"].get("phase") for n, p in now.items()
                if p["status"].get("phase") != ("Succeeded" if n in short else "Running")}

    left = wrong()
    while left and time.monotonic() - restarted < 10:
        time.sleep(0.25)
        left = wrong()
    assert not left, f"not converged 10 s after the restart: {left}"

    all_jobs = jobs(active_only=False)
    per_pod = {uid: [j for j in all_jobs if j.pod_uid == uid] for uid in uids.values()}
    duplicates = {uid: js for uid, js in per_pod.items() if len(js) != 1}
    assert not duplicates, f"pods without exactly one job: {duplicates}"
    orphans = [j for j in jobs() if j.pod_uid not in uids.values()]
    assert not orphans, f"jobs of no pod: {orphans}"
    active = [j for j in jobs() if j.pod_uid in uids.values()]
    assert len(active) == PODS - len(short), f"active: {active}; every job of the pods: {[j for j in jobs(active_only=False) if j.pod_uid in uids.values()]}"
