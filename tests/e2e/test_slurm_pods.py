"""Pods of the virtual HPC node run as Slurm jobs, through kubectl as a user would: logs, env and
volumes, init containers, failures, OOM, deadlines, deletes and Jobs (docs/slurm.md)."""

from __future__ import annotations

import pwd
import time
from typing import Any

import pytest

from tests.e2e.slurm_support import hpc_node, jobs, jobs_of, wait_for  # noqa: F401 - hpc_node is a fixture
from tests.fixtures.virtual_node import TERMINAL, VirtualNode

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]


def site_user() -> tuple[int, int]:
    """A user of this machine other than root (a Slurm job runs as a user the site knows)."""
    users = sorted((u.pw_uid, u.pw_gid) for u in pwd.getpwall() if 1000 <= u.pw_uid < 65534)
    return users[0] if users else (65534, 65534)


def terminated(pod: dict[str, Any], name: str = "main", key: str = "containerStatuses") -> dict[str, Any]:
    for cs in pod["status"].get(key, []):
        if cs["name"] == name:
            return cs["state"].get("terminated") or {}
    return {}


def test_hello_world_runs_as_a_job_and_kubectl_logs_shows_it(hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    hpc_node.create(ns, hpc_node.pod("hello", [{"name": "main", "command": ["sh", "-c", "echo hello world; echo bye"]}]))
    pod = hpc_node.wait_phase(ns, "hello", *TERMINAL, timeout=60)
    assert pod["status"]["phase"] == "Succeeded"
    assert hpc_node.logs(ns, "hello") == "hello world\nbye\n"
    assert hpc_node.logs(ns, "hello", "--tail=1") == "bye\n"
    assert jobs_of(pod["metadata"]["uid"]), "no Slurm job carried the pod"
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("slurm://")


def test_env_configmap_secret_volumes_and_envfrom_reach_the_container(hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    uid, gid = site_user()
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hpc-cm"}, "data": {"colour": "blue", "size": "9"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hpc-secret"}, "stringData": {"password": "s3cret"}}
    script = ("echo A=$A; echo colour=$colour; cat /cfg/size; echo; cat /sec/password; echo; "
              "stat -c '%a %u' /sec/password; id -u; touch /scratch/x && echo scratch-ok")
    pod = hpc_node.pod("envpod", [{
        "name": "main", "command": ["sh", "-c", script],
        "env": [{"name": "A", "value": "from-env"}],
        "envFrom": [{"configMapRef": {"name": "hpc-cm"}}],
        "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "sec", "mountPath": "/sec"},
                         {"name": "scratch", "mountPath": "/scratch"}],
    }], securityContext={"runAsUser": uid, "runAsGroup": gid},
        volumes=[{"name": "cfg", "configMap": {"name": "hpc-cm"}}, {"name": "sec", "secret": {"secretName": "hpc-secret"}},
                 {"name": "scratch", "emptyDir": {}}])
    hpc_node.create(ns, cm, secret, pod)
    status = hpc_node.wait_phase(ns, "envpod", *TERMINAL, timeout=60)
    out = hpc_node.logs(ns, "envpod")
    assert status["status"]["phase"] == "Succeeded", out
    assert out.splitlines() == ["A=from-env", "colour=blue", "9", "s3cret", f"600 {uid}", str(uid), "scratch-ok"]


def test_init_containers_run_in_order_then_the_main_container(hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    pod = hpc_node.pod(
        "inits", [{"name": "main", "command": ["sh", "-c", "cat /w/order"], "volumeMounts": [{"name": "w", "mountPath": "/w"}]}],
        initContainers=[{"name": f"init{i}", "command": ["sh", "-c", f"sleep 0.{3 - i}; echo init{i} >> /w/order"],
                         "volumeMounts": [{"name": "w", "mountPath": "/w"}]} for i in (1, 2, 3)],
        volumes=[{"name": "w", "emptyDir": {}}])
    hpc_node.create(ns, pod)
    status = hpc_node.wait_phase(ns, "inits", *TERMINAL, timeout=60)
    assert status["status"]["phase"] == "Succeeded"
    assert hpc_node.logs(ns, "inits") == "init1\ninit2\ninit3\n"
    assert all(terminated(status, f"init{i}", "initContainerStatuses").get("reason") == "Completed" for i in (1, 2, 3))


def test_a_failing_container_fails_the_pod_with_its_exit_code(hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    hpc_node.create(ns, hpc_node.pod("fails", [{"name": "main", "command": ["sh", "-c", "echo oops >&2; exit 3"]}]))
    status = hpc_node.wait_phase(ns, "fails", *TERMINAL, timeout=60)
    term = terminated(status)
    assert status["status"]["phase"] == "Failed"
    assert (term.get("exitCode"), term.get("reason")) == (3, "Error")
    assert hpc_node.logs(ns, "fails") == "oops\n"


def test_exceeding_the_memory_limit_is_oomkilled(hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    hpc_node.create(ns, hpc_node.pod("oom", [{
        "name": "main", "command": ["sh", "-c", "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived"],
        "resources": {"limits": {"memory": "64Mi"}}}]))
    status = hpc_node.wait_phase(ns, "oom", *TERMINAL, timeout=60)
    term = terminated(status)
    assert status["status"]["phase"] == "Failed"
    assert (term.get("reason"), term.get("exitCode")) == ("OOMKilled", 137)


def test_active_deadline_seconds_fails_the_pod_as_deadline_exceeded(hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    hpc_node.create(ns, hpc_node.pod("deadline", [{"name": "main", "command": ["sleep", "600"]}],
                                     activeDeadlineSeconds=4, terminationGracePeriodSeconds=2))
    started = time.monotonic()
    status = hpc_node.wait_phase(ns, "deadline", *TERMINAL, timeout=60)
    assert (status["status"]["phase"], status["status"].get("reason")) == ("Failed", "DeadlineExceeded")
    assert time.monotonic() - started < 30
    uid = status["metadata"]["uid"]
    wait_for(lambda: not jobs_of(uid, active_only=True), 10, "the job ended")


def test_kubectl_delete_cancels_the_job_within_the_grace_period(hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    grace = 5
    # A container that ignores SIGTERM: the job must still be gone once the grace period is over.
    hpc_node.create(ns, hpc_node.pod("victim", [{"name": "main", "command": ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]}],
                                     terminationGracePeriodSeconds=grace))
    pod = hpc_node.wait_phase(ns, "victim", "Running", timeout=60)
    uid = pod["metadata"]["uid"]
    assert jobs_of(uid, active_only=True), "the pod runs without an active job"
    started = time.monotonic()
    hpc_node.cluster.kubectl("delete", "pod", "victim", "-n", ns, "--wait=false")
    wait_for(lambda: not jobs_of(uid, active_only=True), grace + 2, "squeue without the pod's job")
    assert time.monotonic() - started <= grace + 2
    hpc_node.wait_gone(ns, "victim", timeout=30)


def test_a_job_with_backoff_limit_retries_failed_pods(hpc_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    template = hpc_node.pod("unused", [{"name": "main", "command": ["sh", "-c", "echo try; exit 1"]}])
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "retries"},
           "spec": {"backoffLimit": 2, "template": {"metadata": {"labels": template["metadata"]["labels"]},
                                                    "spec": template["spec"]}}}
    hpc_node.create(ns, job)

    def failed_pods() -> int:
        pods = hpc_node.cluster.kubectl_json("get", "pods", "-n", ns, "-l", "job-name=retries")["items"]
        return len([p for p in pods if p["status"].get("phase") == "Failed"])

    def job_failed() -> bool:
        j = hpc_node.cluster.kubectl_json("get", "job", "retries", "-n", ns)
        return any(c["type"] == "Failed" and c["status"] == "True" for c in j.get("status", {}).get("conditions", []))

    wait_for(job_failed, 120, "the Job failed after its retries", interval=0.5)
    assert failed_pods() == 3  # the first try and backoffLimit=2 retries, each a Slurm job
    uids = [p["metadata"]["uid"] for p in hpc_node.cluster.kubectl_json("get", "pods", "-n", ns, "-l", "job-name=retries")["items"]]
    assert all(jobs_of(u) for u in uids)
