"""Probes, lifecycle hooks and termination messages on the virtual node, end to end (kubectl against
the real cluster, vk_bridge -> interlink -> Docker sidecar -> the real Docker engine), each held
against the same pod on the cluster's real node, kod-worker, where the real kubelet runs it: the
same reasons, the same event messages, the same termination messages.

What a user sees: Ready and ContainersReady following a readiness probe and the pod's endpoint in
its Service's EndpointSlice following them; a failing liveness probe restarting the container
(restartCount grows) with Unhealthy and Killing events; a startup probe holding liveness off;
postStart's file seen by the container; preStop's line in the logs before the stop signal's;
FailedPostStartHook; terminationMessagePath and FallbackToLogsOnError in `kubectl get pod -o json`.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.virtual_node import TEST_LABEL, VirtualNode, kubectl_stream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

#: The cluster's real node, whose kubelet is the reference.
WORKER = "kod-worker"


@pytest.fixture
def reference_namespace(virtual_node: VirtualNode) -> Iterator[str]:
    """A namespace of the test's own for the reference pods on kod-worker (deleted afterwards)."""
    name = f"kod-ref-{uuid.uuid4().hex[:6]}"
    virtual_node.cluster.kubectl("create", "namespace", name)
    yield name
    virtual_node.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def on_worker(pod: dict[str, Any]) -> dict[str, Any]:
    """The same pod for kod-worker (the real kubelet)."""
    out = copy.deepcopy(pod)
    out["spec"]["nodeSelector"] = {"kubernetes.io/hostname": WORKER}
    out["spec"].pop("tolerations", None)
    return out


def both(vn: VirtualNode, ns: str, ref_ns: str, pod: dict[str, Any]) -> None:
    """Create `pod` on the virtual node (in `ns`) and on kod-worker (in `ref_ns`)."""
    vn.create(ns, pod)
    vn.cluster.apply(on_worker(pod), namespace=ref_ns)


def events(vn: VirtualNode, ns: str, name: str) -> dict[tuple[str, str], int]:
    """(reason, message) -> count of the pod's events (only those of its current uid)."""
    pod = vn.get(ns, name)
    assert pod is not None
    items = vn.cluster.kubectl_json("get", "events", "-n", ns, "--field-selector",
                                    f"involvedObject.uid={pod['metadata']['uid']}")["items"]
    out: dict[tuple[str, str], int] = {}
    for e in items:
        key = (e["reason"], e["message"])
        out[key] = max(out.get(key, 0), int(e.get("count") or 1))
    return out


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")


def status_of(pod: dict[str, Any], container: str = "main") -> dict[str, Any]:
    for st in pod.get("status", {}).get("containerStatuses", []):
        if st["name"] == container:
            return dict(st)
    return {}


def condition(pod: dict[str, Any], ctype: str) -> str | None:
    for c in pod.get("status", {}).get("conditions", []):
        if c["type"] == ctype:
            return str(c["status"])
    return None


def docker_exec(vn: VirtualNode, pod: dict[str, Any], container: str, *cmd: str) -> None:
    """Run `cmd` in the pod's running container through Docker itself (the test's side door)."""
    cid = status_of(pod, container)["containerID"].split("://", 1)[1]
    result = vn.docker.containers.get(cid).exec_run(list(cmd))
    assert result.exit_code == 0, result.output


def probe_pod(vn: VirtualNode, name: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return vn.pod(name, [{"name": "main", **container}], **spec)


# ------------------------------------------------------------------------------ readiness


def endpoint_ready(vn: VirtualNode, ns: str, service: str, ip: str) -> bool | None:
    """The `ready` condition of address `ip` in the Service's EndpointSlices (None: not listed)."""
    slices = vn.cluster.kubectl_json("get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={service}")
    for s in slices["items"]:
        for ep in s.get("endpoints") or []:
            if ip in ep.get("addresses", []):
                return bool((ep.get("conditions") or {}).get("ready"))
    return None


def test_readiness_follows_a_file_into_ready_and_the_services_endpoint_slice(
    virtual_node: VirtualNode, owner_namespace: str
) -> None:
    vn, ns = virtual_node, owner_namespace
    pod = probe_pod(vn, "ready-flip", {
        "command": ["sh", "-c", "sleep 3600"],
        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1},
    }, restartPolicy="Always", terminationGracePeriodSeconds=1)
    pod["metadata"]["labels"]["app"] = "ready-flip"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ready-flip"},
               "spec": {"selector": {"app": "ready-flip"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    vn.create(ns, service, pod)
    running = vn.wait(ns, "ready-flip", lambda p: "running" in status_of(p).get("state", {}) and bool(p["status"].get("podIP")),
                      what="running with an IP")
    ip = running["status"]["podIP"]
    time.sleep(2)  # several probes: still unready (no file)
    now = vn.get(ns, "ready-flip")
    assert now is not None and condition(now, "Ready") == "False" and condition(now, "ContainersReady") == "False"
    assert status_of(now)["ready"] is False and status_of(now)["started"] is True
    assert wait_until("the endpoint listed unready", lambda: endpoint_ready(vn, ns, "ready-flip", ip) is False)

    docker_exec(vn, now, "main", "touch", "/tmp/ready")
    ready = vn.wait(ns, "ready-flip", lambda p: condition(p, "Ready") == "True", timeout=20, what="Ready")
    assert condition(ready, "ContainersReady") == "True" and status_of(ready)["ready"] is True
    assert wait_until("the endpoint ready", lambda: endpoint_ready(vn, ns, "ready-flip", ip) is True)

    docker_exec(vn, ready, "main", "rm", "/tmp/ready")
    vn.wait(ns, "ready-flip", lambda p: condition(p, "Ready") == "False", timeout=20, what="not Ready again")
    assert wait_until("the endpoint unready again", lambda: endpoint_ready(vn, ns, "ready-flip", ip) is False)
    assert status_of(vn.get(ns, "ready-flip") or {})["restartCount"] == 0  # readiness never restarts
    unhealthy = [m for (r, m) in events(vn, ns, "ready-flip") if r == "Unhealthy"]
    assert unhealthy and all(m.startswith("Readiness probe failed: ") for m in unhealthy)


# ------------------------------------------------------------------------------ liveness, startup


LIVENESS = {
    "command": ["sh", "-c", "sleep 3600"],
    "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2},
}


def test_a_failing_liveness_probe_restarts_the_container_with_the_kubelets_events(
    virtual_node: VirtualNode, owner_namespace: str, reference_namespace: str
) -> None:
    vn, ns, ref = virtual_node, owner_namespace, reference_namespace
    pod = probe_pod(vn, "live", copy.deepcopy(LIVENESS), restartPolicy="Always", terminationGracePeriodSeconds=1)
    both(vn, ns, ref, pod)
    restarted = vn.wait(ns, "live", lambda p: status_of(p).get("restartCount", 0) >= 1, timeout=60, what="a restart")
    last = status_of(restarted)["lastState"]["terminated"]
    assert last["reason"] == "Error" and last["exitCode"] == 137  # sh ignores SIGTERM: SIGKILL after the grace period
    vn.wait(ref, "live", lambda p: status_of(p).get("restartCount", 0) >= 1, timeout=60, what="a restart on kod-worker")
    ours, theirs = events(vn, ns, "live"), events(vn, ref, "live")
    killing = ("Killing", "Container main failed liveness probe, will be restarted")
    unhealthy = ("Unhealthy", "Liveness probe failed: cat: /tmp/healthy: No such file or directory\n")
    assert killing in ours and unhealthy in ours
    assert killing in theirs and unhealthy in theirs  # word for word what the kubelet writes
    assert {k for k in ours if k[0] in ("Killing", "Unhealthy")} == {k for k in theirs if k[0] in ("Killing", "Unhealthy")}


def test_a_startup_probe_holds_the_liveness_probe_off_until_it_succeeds(
    virtual_node: VirtualNode, owner_namespace: str
) -> None:
    vn, ns = virtual_node, owner_namespace
    # Liveness alone would kill it within 2 s; the startup probe allows 20 s for the file.
    pod = probe_pod(vn, "slow-start", {
        "command": ["sh", "-c", "sleep 6; touch /tmp/up; sleep 3600"],
        "startupProbe": {"exec": {"command": ["cat", "/tmp/up"]}, "periodSeconds": 1, "failureThreshold": 20},
        "livenessProbe": {"exec": {"command": ["cat", "/tmp/up"]}, "periodSeconds": 1, "failureThreshold": 1},
        "readinessProbe": {"exec": {"command": ["cat", "/tmp/up"]}, "periodSeconds": 1},
    }, restartPolicy="Always", terminationGracePeriodSeconds=1)
    vn.create(ns, pod)
    early = vn.wait(ns, "slow-start", lambda p: "running" in status_of(p).get("state", {}), what="running")
    assert status_of(early)["started"] is False and status_of(early)["ready"] is False
    ready = vn.wait(ns, "slow-start", lambda p: condition(p, "Ready") == "True", timeout=40, what="Ready")
    assert status_of(ready)["started"] is True and status_of(ready)["restartCount"] == 0
    time.sleep(3)
    assert status_of(vn.get(ns, "slow-start") or {})["restartCount"] == 0
    reasons = {m.split(":", 1)[0] for (r, m) in events(vn, ns, "slow-start") if r == "Unhealthy"}
    assert reasons == {"Startup probe failed"}  # liveness and readiness never ran before it succeeded


def test_an_http_readiness_probe_reaches_the_pods_address(virtual_node: VirtualNode, owner_namespace: str) -> None:
    vn, ns = virtual_node, owner_namespace
    pod = probe_pod(vn, "http-ready", {
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && httpd -f -p 8080 -h /www"],
        "ports": [{"name": "web", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "web"}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }, restartPolicy="Always", terminationGracePeriodSeconds=1)
    vn.create(ns, pod)
    ready = vn.wait(ns, "http-ready", lambda p: condition(p, "Ready") == "True", timeout=40, what="Ready")
    assert status_of(ready)["restartCount"] == 0


# ------------------------------------------------------------------------------ hooks


def test_post_start_writes_a_file_the_container_sees(virtual_node: VirtualNode, owner_namespace: str) -> None:
    vn, ns = virtual_node, owner_namespace
    pod = probe_pod(vn, "post-start", {
        "command": ["sh", "-c", "for i in $(seq 100); do [ -s /tmp/hook ] && break; sleep 0.1; done; cat /tmp/hook"],
        "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo written-by-post-start > /tmp/hook"]}}},
    })
    vn.create(ns, pod)
    done = vn.wait_phase(ns, "post-start", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded"
    assert vn.logs(ns, "post-start") == "written-by-post-start\n"


PRE_STOP = {
    "command": ["sh", "-c", "trap 'echo got-the-stop-signal; exit 0' TERM; echo up; while true; do sleep 0.1; done"],
    # Its output goes to the main process's stdout: the container's log, in order.
    "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo pre-stop-ran > /proc/1/fd/1; sleep 1"]}}},
}


def follow_until_stopped(vn: VirtualNode, ns: str, name: str) -> list[str]:
    vn.wait(ns, name, lambda p: "running" in status_of(p).get("state", {}), what="running")
    stream = kubectl_stream(vn.cluster, "logs", "-f", name, "-n", ns)
    try:
        assert stream.readline(20).strip() == "up"
        vn.cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=false")
        lines = []
        while (line := stream.readline(30)) != "":
            lines.append(line.strip())
            if line.strip() == "got-the-stop-signal":
                break
        return lines
    finally:
        stream.kill()


def test_pre_stop_runs_before_the_stop_signal_as_on_the_real_node(
    virtual_node: VirtualNode, owner_namespace: str, reference_namespace: str
) -> None:
    vn, ns, ref = virtual_node, owner_namespace, reference_namespace
    pod = probe_pod(vn, "pre-stop", copy.deepcopy(PRE_STOP), terminationGracePeriodSeconds=10)
    both(vn, ns, ref, pod)
    assert follow_until_stopped(vn, ns, "pre-stop") == ["pre-stop-ran", "got-the-stop-signal"]
    assert follow_until_stopped(vn, ref, "pre-stop") == ["pre-stop-ran", "got-the-stop-signal"]


def test_a_failed_post_start_kills_the_container_with_the_kubelets_events(
    virtual_node: VirtualNode, owner_namespace: str, reference_namespace: str
) -> None:
    vn, ns, ref = virtual_node, owner_namespace, reference_namespace
    pod = probe_pod(vn, "bad-hook", {
        "command": ["sh", "-c", "sleep 3600"],
        "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo secret; exit 3"]}}},
    }, restartPolicy="Always", terminationGracePeriodSeconds=1)
    both(vn, ns, ref, pod)
    for where in (ns, ref):
        vn.wait(where, "bad-hook", lambda p: status_of(p).get("restartCount", 0) >= 1, timeout=60, what=f"a restart in {where}")
    wanted = {("FailedPostStartHook", "PostStartHook failed"), ("Killing", "FailedPostStartHook")}
    assert wanted <= set(events(vn, ns, "bad-hook"))
    assert wanted <= set(events(vn, ref, "bad-hook"))


# ------------------------------------------------------------------------------ termination messages


def test_termination_messages_are_those_of_the_real_node(
    virtual_node: VirtualNode, owner_namespace: str, reference_namespace: str
) -> None:
    vn, ns, ref = virtual_node, owner_namespace, reference_namespace
    containers = [
        {"name": "file", "command": ["sh", "-c", "printf 'bye from the file' > /dev/termination-log"]},
        {"name": "logs", "terminationMessagePolicy": "FallbackToLogsOnError",
         "command": ["sh", "-c", "for i in $(seq 1 100); do echo line $i; done; exit 2"]},
        {"name": "custom", "terminationMessagePath": "/tmp/msg",
         "command": ["sh", "-c", "echo custom > /tmp/msg; [ ! -e /dev/termination-log ]"]},
        {"name": "quiet", "terminationMessagePolicy": "FallbackToLogsOnError", "command": ["sh", "-c", "echo fine"]},
    ]
    pod = vn.pod("messages", containers)
    both(vn, ns, ref, pod)
    ours = vn.wait_phase(ns, "messages", "Succeeded", "Failed")
    theirs = vn.wait_phase(ref, "messages", "Succeeded", "Failed", timeout=90)

    def messages(p: dict[str, Any]) -> dict[str, tuple[int, str | None]]:
        return {c["name"]: (c["state"]["terminated"]["exitCode"], c["state"]["terminated"].get("message"))
                for c in p["status"]["containerStatuses"]}

    assert messages(ours) == {
        "file": (0, "bye from the file"),
        "logs": (2, "".join(f"line {i}\n" for i in range(21, 101))),
        "custom": (0, "custom\n"),
        "quiet": (0, None),
    }
    assert messages(ours) == messages(theirs)
    assert json.dumps(ours["status"]).count("bye from the file") == 1
    assert TEST_LABEL[0] in ours["metadata"]["labels"]
