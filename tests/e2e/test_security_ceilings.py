"""Ceilings of the pods on the desktop, against the real cluster, virtual node and Docker engine:
a pod that tries to take the desktop's memory or processes is stopped at its ceiling, and the
user's session on the same desktop (a cloudify viewer pod showing Firefox) keeps running.

- memory: a container with a limit, and one without (the desktop's default limit, 1Gi, applies),
  each allocating more than it may: OOMKilled, the pod Failed;
- processes: a container forking until it cannot stops at the PID limit (1024 by default);
- memory-backed volumes: an emptyDir of medium Memory is bounded by its sizeLimit;
- limits above the desktop's maxima are refused before anything is created.
(The node's allocatable is enforced by vk_bridge's admission:
tests/e2e/test_security_admission.py::test_a_pod_of_the_owner_that_exceeds_the_desktops_allocatable_is_refused.)
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from kod import labels
from tests.e2e.cloudify_support import (  # noqa: F401 - fixtures
    FIREFOX_WINDOW,
    Cloudify,
    cloudify,
    cloudify_images,
    firefox_drawn,
)
from tests.e2e.test_cloudify_session import close_firefox, see_firefox
from tests.fixtures.virtual_node import VirtualNode

pytestmark = pytest.mark.e2e

#: Prints the container's memory and PID limits as its cgroup says (v1 or v2).
LIMITS = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null | head -1; "
          "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null | head -1; ")
#: Forks sleepers until the kernel refuses (sh then ends with "Cannot fork"), counting them.
FORK_BOMB = LIMITS + "n=0; while [ $n -lt 5000 ]; do sleep 300 & n=$((n+1)); echo $n > /tmp/n; done; echo ALL-STARTED"


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def viewer_pod(cloudify: Cloudify, session: str) -> dict[str, Any]:
    items = cloudify.kubectl_json("get", "pods", "-n", cloudify.namespace, "-l",
                                  f"{labels.ROLE}=viewer,{labels.SESSION}={session}")["items"]
    assert len(items) == 1, items
    return items[0]


@pytest.mark.timeout(480)
def test_pods_at_their_memory_and_pid_ceilings_are_stopped_and_the_session_keeps_running(
    cloudify: Cloudify, desktop: Any, virtual_node: VirtualNode, owner_namespace: str
) -> None:
    session, window = see_firefox(cloudify, desktop, "ceilings")
    before = viewer_pod(cloudify, session.session_id)
    assert before["spec"]["nodeName"] == virtual_node.name

    ns = owner_namespace
    hog = virtual_node.pod("hog", [{"name": "main", "command": ["sh", "-c", LIMITS + "exec dd if=/dev/zero of=/dev/null bs=256M count=1"],
                                    "resources": {"limits": {"memory": "64Mi"}}}])
    default_hog = virtual_node.pod("default-hog", [{"name": "main", "command": [
        "sh", "-c", LIMITS + "exec dd if=/dev/zero of=/dev/null bs=1300M count=1"]}])
    forks = virtual_node.pod("forks", [{"name": "main", "command": ["sh", "-c", FORK_BOMB]}])
    virtual_node.create(ns, hog, default_hog, forks)

    for name, limit in (("hog", 64 * 2**20), ("default-hog", 2**30)):
        pod = virtual_node.wait_phase(ns, name, "Failed", "Succeeded", timeout=120)
        assert pod["status"]["phase"] == "Failed", pod["status"]
        assert terminated(pod)["reason"] == "OOMKilled" and terminated(pod)["exitCode"] == 137, terminated(pod)
        assert virtual_node.logs(ns, name).split()[0] == str(limit)  # what the container was held to
    pod = virtual_node.wait_phase(ns, "forks", "Failed", "Succeeded", timeout=120)
    out = virtual_node.logs(ns, "forks")
    assert pod["status"]["phase"] == "Failed" and "Cannot fork" in out and "ALL-STARTED" not in out, out
    assert out.split()[1] == "1024"  # the desktop's PID limit per container (limits.pids)

    # The user's session on the same desktop is unharmed: the same viewer pod, never restarted,
    # still showing Firefox, and cloudify still running.
    after = viewer_pod(cloudify, session.session_id)
    assert after["metadata"]["uid"] == before["metadata"]["uid"] and after["status"]["phase"] == "Running"
    assert all(cs["restartCount"] == 0 and "running" in cs["state"] for cs in after["status"]["containerStatuses"])
    assert session.proc.poll() is None, session.stderr
    assert desktop.find_window(FIREFOX_WINDOW) is not None
    desktop.wait_for_content(window.box, firefox_drawn, timeout=30, what="Firefox still drawn in the viewer window")
    assert close_firefox(desktop, window, session) == 0, session.stderr


@pytest.mark.timeout(120)
def test_a_memory_backed_volume_holds_no_more_than_its_size_limit(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    script = ("dd if=/dev/zero of=/m/fill bs=1M count=64 2>&1; echo SIZE $(( $(stat -c %s /m/fill) / 1048576 ))")
    pod = virtual_node.pod("tmpfs", [{"name": "main", "command": ["sh", "-c", script],
                                      "volumeMounts": [{"name": "m", "mountPath": "/m"}]}],
                           volumes=[{"name": "m", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}])
    virtual_node.create(ns, pod)
    virtual_node.wait_phase(ns, "tmpfs", "Failed", "Succeeded")
    out = virtual_node.logs(ns, "tmpfs")
    assert "No space left on device" in out, out
    # The pod's tmpfs holds the emptyDir's sizeLimit plus 1 MiB it keeps for directories.
    size = int(out.split("SIZE")[1])
    assert size <= 8 + 1, out


@pytest.mark.parametrize(("resource", "value", "setting"), [("memory", "100Gi", "limits.max_memory"),
                                                             ("cpu", "64", "limits.max_cpu")])
@pytest.mark.timeout(120)
def test_a_limit_above_the_desktops_maximum_is_refused(
    virtual_node: VirtualNode, owner_namespace: str, resource: str, value: str, setting: str
) -> None:
    ns = owner_namespace
    # Requests within the allocatable (vk_bridge's admission passes it), a limit above the maximum.
    name = f"max-{resource}"
    body = virtual_node.pod(name, [{"name": "main", "command": ["true"], "resources": {
        "requests": {resource: "100m" if resource == "cpu" else "16Mi"}, "limits": {resource: value}}}])
    virtual_node.create(ns, body)
    pod = virtual_node.wait_phase(ns, name, "Failed", "Succeeded", "Running")
    status = pod["status"]
    assert status["phase"] == "Failed" and status.get("reason") == "Forbidden", status
    assert setting in status["message"] and "above this desktop's maximum" in status["message"]
    assert virtual_node.containers(pod["metadata"]["uid"]) == []


@pytest.mark.timeout(120)
def test_a_claim_that_does_not_exist_makes_no_storage_on_the_desktop(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    claim = f"nope-{uuid.uuid4().hex[:6]}"
    body = virtual_node.pod("no-claim", [{"name": "main", "command": ["sh", "-c", "echo x > /data/x"],
                                          "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                            volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": claim}}])
    # Straight to the desktop (the scheduler would keep a pod with a missing claim to itself).
    del body["spec"]["nodeSelector"]
    body["spec"]["nodeName"] = virtual_node.name
    virtual_node.create(ns, body)

    def failed_mount(pod: dict[str, Any]) -> list[dict[str, Any]]:
        # This pod's events only: those of an earlier pod of the same name live on for an hour.
        events = virtual_node.cluster.kubectl_json("get", "events", "-n", ns, "--field-selector",
                                                   f"involvedObject.name=no-claim,involvedObject.uid={pod['metadata']['uid']}")
        return [e for e in events["items"] if e.get("reason") == "FailedMount"]

    pod = virtual_node.wait(ns, "no-claim", lambda p: bool(failed_mount(p)), what="a FailedMount event")
    assert f'persistentvolumeclaim "{claim}" not found' in failed_mount(pod)[0]["message"]
    assert pod["status"]["phase"] == "Pending"
    assert virtual_node.containers(pod["metadata"]["uid"]) == []
    assert [v.name for v in virtual_node.docker.volumes.list() if claim in v.name] == []
