"""kill -9 of the Slurm sidecar while 20 pods of the HPC node run, then a restart: the new process
adopts every job (by its comment), statuses converge, and no job is duplicated or left behind."""

from __future__ import annotations

import time

import pytest

from tests.e2e.slurm_support import hpc_node, jobs, wait_for  # noqa: F401 - hpc_node is a fixture
from tests.fixtures.virtual_node import RUN_LABEL, VirtualNode

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

PODS = 20


@pytest.mark.timeout(400)
def test_kill_9_of_the_sidecar_during_20_pods_converges_without_duplicates_or_orphans(
        hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    # Half end while the sidecar is dead (their end must still be reported), half keep running.
    short = {f"crash-{i}" for i in range(0, PODS, 2)}
    objects = [hpc_node.pod(f"crash-{i}", [{"name": "main", "command": ["sh", "-c", "sleep 25; echo done" if f"crash-{i}" in short
                                                                       else "sleep 3600"]}],
                            terminationGracePeriodSeconds=1) for i in range(PODS)]
    hpc_node.create(ns, *objects)

    def pods() -> dict[str, dict]:
        items = hpc_node.cluster.kubectl_json("get", "pods", "-n", ns, "-l", f"{RUN_LABEL[0]}={RUN_LABEL[1]}")["items"]
        return {p["metadata"]["name"]: p for p in items if p["metadata"]["name"].startswith("crash-")}

    wait_for(lambda: len(pods()) == PODS and all(p["status"].get("phase") == "Running" for p in pods().values()), 180,
             "all 20 pods Running", interval=0.5)
    uids = {name: p["metadata"]["uid"] for name, p in pods().items()}
    hpc_node.kill("sidecar")
    short_uids = {uids[n] for n in short}
    # The short pods end while the sidecar is dead: the new process must find out from Slurm.
    wait_for(lambda: not [j for j in jobs() if j.pod_uid in short_uids], 60, "the short pods' jobs ended", interval=0.5)
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
