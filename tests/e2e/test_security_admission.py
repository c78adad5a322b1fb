"""Who may run pods on a desktop, end to end: attacks that must fail.

User B may create pods only in B's own namespace (kod-bob, B's real kubeconfig). B tries every
field that binds a pod to a node to get something started on user A's desktop (the `virtual_node`
fixture, owned by A: it runs pods of A's namespace only):

- with the admission policy (kustomizations/admission), the API server refuses each pod at
  creation, or the scheduler's binding of it to A's node, with a message that names the node and
  whose desktop it is;
- with the policy's binding removed for the test (vk_bridge's own admission is then the only
  layer), each pod is bound to A's node and ends Failed there, reason NotAllowedByOwner, with a
  Warning event, and nothing of it appears in A's Docker (checked by the sidecar's labels).

And A's own pods are held to A's desktop's allocatable (OutOf<resource>), and a running pod the
owner no longer allows is stopped when vk_bridge adopts it after a restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kod import labels
from localenv import desktop_stack, node_registry, users
from localenv.progress import Progress
from tests.fixtures.users import KubectlAs, policy_refuses, wait_until
from tests.fixtures.virtual_node import TEST_LABELS, VirtualNode, crash_settings

pytestmark = pytest.mark.e2e

POLICY = "ValidatingAdmissionPolicy 'kod-virtual-node-owner'"
#: Tolerates the virtual node's taint (any effect), as an attacker would add.
TOLERATE_VIRTUAL_NODE = {"key": labels.VIRTUAL_NODE_TAINT_KEY, "operator": "Exists"}
TOLERATE_EVERYTHING = {"operator": "Exists"}


def required(term: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def preferred(node: str) -> dict[str, Any]:
    """Steers the scheduler to `node` without naming it in a required field."""
    term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": term}]}}


def attack_specs(a: VirtualNode, owner: str) -> dict[str, dict[str, Any]]:
    """Every way of binding a pod to A's node, as pod spec fields."""
    node = a.name
    return {
        "nodeName": {"nodeName": node},
        "nodeSelector-hostname": {"nodeSelector": {"kubernetes.io/hostname": node}, "tolerations": [TOLERATE_VIRTUAL_NODE]},
        # A's other desktops (the crash tests' node) carry the same labels: prefer this one.
        "nodeSelector-virtual-kubelet-labels": {
            "nodeSelector": {labels.NODE_TYPE: labels.VIRTUAL_KUBELET, labels.DESKTOP_OF: owner},
            "tolerations": [TOLERATE_VIRTUAL_NODE], "affinity": preferred(node)},
        "affinity-matchFields": {"affinity": required({"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}),
                                 "tolerations": [TOLERATE_VIRTUAL_NODE]},
        "affinity-matchExpressions": {
            "affinity": required({"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["elsewhere", node]}]}),
            "tolerations": [TOLERATE_VIRTUAL_NODE]},
        "tolerate-everything-scheduler-picks": {"tolerations": [TOLERATE_EVERYTHING], "affinity": preferred(node)},
    }


#: Refused by the API server when the pod is created (they name the node in a required field).
REFUSED_AT_CREATION = ("nodeName", "nodeSelector-hostname", "affinity-matchFields", "affinity-matchExpressions")
#: Created (they name no node), then refused when the scheduler binds them to A's node.
REFUSED_AT_BINDING = ("nodeSelector-virtual-kubelet-labels", "tolerate-everything-scheduler-picks")


def attack_pod(name: str, namespace: str, image: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kod.io/test": "attack"}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                                 "command": ["sh", "-c", "cat /etc/hostname; sleep 300"]}], **spec},
    }


@pytest.fixture
def b_namespace(cluster: Any, user_b: users.User) -> Iterator[str]:
    """B's namespace; what a test left there is deleted afterwards."""
    yield user_b.namespace
    for kind in ("deployments.apps", "jobs.batch", "pods"):
        cluster.kubectl("delete", kind, "--all", "-n", user_b.namespace, "--wait=false", "--grace-period=0",
                        "--force", check=False)
    cluster.kubectl("delete", "role,rolebinding", "-n", user_b.namespace, "-l", "kod.io/test=attack", check=False)


def a_docker(a: VirtualNode, namespace: str) -> list[str]:
    """Containers A's sidecar made for pods of `namespace` (by the sidecar's own labels)."""
    filters = {"label": [f"io.kod.sidecar={a.stack.settings.sidecar_name}", f"{labels.D_POD_NAMESPACE}={namespace}"]}
    return [c.name for c in a.docker.containers.list(all=True, ignore_removed=True, filters=filters)]


def events(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"])


def wait_event(cluster: Any, namespace: str, name: str, match: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in events(cluster, namespace, name) if match(e)]
        return bool(found)

    try:
        wait_until(seen, timeout, f"an event of {namespace}/{name}")
    except AssertionError:
        got = [(e.get("reason"), e.get("message")) for e in events(cluster, namespace, name)]
        raise AssertionError(f"no matching event of {namespace}/{name} within {timeout:.0f} s; events: {got}") from None
    return found[0]


# --- with the policy: the API server refuses ----------------------------------------------------


@pytest.mark.parametrize("how", REFUSED_AT_CREATION)
def test_with_the_policy_a_pod_naming_a_desktop_is_refused_at_creation(
        virtual_node: VirtualNode, user_a: users.User, user_b: users.User, kubectl_as: Callable[[users.User], KubectlAs],
        b_namespace: str, testbox_image: str, how: str) -> None:
    spec = attack_specs(virtual_node, user_a.name)[how]
    proc = kubectl_as(user_b).create(attack_pod(f"attack-{how.lower()}", b_namespace, testbox_image, spec))
    assert proc.returncode != 0, proc.stdout
    assert POLICY in proc.stderr, proc.stderr
    assert f"may not run on virtual node {virtual_node.name}: that desktop runs only pods of {user_a.namespace}" in proc.stderr
    assert virtual_node.cluster.kubectl_json("get", "pods", "-n", b_namespace)["items"] == []
    assert a_docker(virtual_node, b_namespace) == []


@pytest.mark.parametrize("how", REFUSED_AT_BINDING)
def test_with_the_policy_the_scheduler_may_not_bind_a_strangers_pod_to_a_desktop(
        virtual_node: VirtualNode, desktop_b: VirtualNode, user_a: users.User, user_b: users.User,
        kubectl_as: Callable[[users.User], KubectlAs], b_namespace: str, testbox_image: str, how: str) -> None:
    """The pod names no node (it selects A's by labels, or tolerates everything and prefers A's):
    it is created (B has a desktop of B's own, which the labels could mean), the scheduler picks
    A's node, and the binding is refused: it never starts there."""
    name = f"attack-{how.lower()}"
    proc = kubectl_as(user_b).create(attack_pod(name, b_namespace, testbox_image, attack_specs(virtual_node, user_a.name)[how]))
    assert proc.returncode == 0, proc.stderr
    refused = wait_event(virtual_node.cluster, b_namespace, name,
                         lambda e: f"to virtual node {virtual_node.name} is refused" in (e.get("message") or ""))
    assert refused["reason"] == "FailedScheduling" and POLICY in refused["message"], refused["message"]
    pod = virtual_node.cluster.kubectl_json("get", "pod", name, "-n", b_namespace)
    assert pod["spec"].get("nodeName") != virtual_node.name
    assert a_docker(virtual_node, b_namespace) == []


@pytest.mark.parametrize("workload", ["Deployment", "Job"])
def test_with_the_policy_a_workload_whose_pods_name_a_desktop_gets_none_created(
        deployments_for_b: None, virtual_node: VirtualNode, user_a: users.User, user_b: users.User, kubectl_as: Callable[[users.User], KubectlAs],
        b_namespace: str, testbox_image: str, workload: str) -> None:
    """The controller creates the pods, in B's namespace: each is refused, the controller says why."""
    name = f"attack-{workload.lower()}"
    obj = workload_object(workload, name, b_namespace, testbox_image, attack_specs(virtual_node, user_a.name)["nodeName"])
    proc = kubectl_as(user_b).create(obj)
    assert proc.returncode == 0, proc.stderr
    owner = f"{name}-" if workload == "Deployment" else name  # the Deployment's ReplicaSet: <name>-<hash>
    refused = wait_controller_event(virtual_node.cluster, b_namespace, owner, "FailedCreate")
    assert POLICY in refused["message"] and f"may not run on virtual node {virtual_node.name}" in refused["message"]
    assert virtual_node.cluster.kubectl_json("get", "pods", "-n", b_namespace)["items"] == []
    assert a_docker(virtual_node, b_namespace) == []


def workload_object(kind: str, name: str, namespace: str, image: str, spec: dict[str, Any]) -> dict[str, Any]:
    template = attack_pod(name, namespace, image, spec)
    template = {"metadata": {"labels": {"app": name}}, "spec": template["spec"]}
    if kind == "Deployment":
        template["spec"]["restartPolicy"] = "Always"
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace, "labels": {"kod.io/test": "attack"}},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
            "spec": {"backoffLimit": 0, "template": template}}


def wait_controller_event(cluster: Any, namespace: str, owner_prefix: str, reason: str, timeout: float = 60) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        items = cluster.kubectl_json("get", "events", "-n", namespace)["items"]
        found[:] = [e for e in items if e.get("reason") == reason
                    and e.get("involvedObject", {}).get("name", "").startswith(owner_prefix)]
        return bool(found)

    wait_until(seen, timeout, f"a {reason} event of {owner_prefix}*")
    return found[0]


@pytest.fixture
def deployments_for_b(cluster: Any, user_b: users.User) -> None:
    """B may create Deployments in B's own namespace too (cloudify's role has Jobs, not these)."""
    ns = user_b.namespace
    cluster.apply(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "deployments", "namespace": ns, "labels": {"kod.io/test": "attack"}},
         "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "get", "list", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "deployments", "namespace": ns, "labels": {"kod.io/test": "attack"}},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployments"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user_b.name}]},
    )


# --- without the policy: vk_bridge refuses -----------------------------------------------------


def assert_refused_on_a(a: VirtualNode, namespace: str, name: str) -> dict[str, Any]:
    """The pod was bound to A's node and vk_bridge refused it: Failed, NotAllowedByOwner, a
    Warning event, no container of it in A's Docker."""
    pod = a.wait_phase(namespace, name, "Failed", "Succeeded", "Running", timeout=90)
    assert pod["spec"].get("nodeName") == a.name, "the attack never reached A's node: it proves nothing"
    status = pod["status"]
    assert (status["phase"], status.get("reason")) == ("Failed", "NotAllowedByOwner"), json.dumps(status)
    assert f"pod {namespace}/{name}" in status["message"] and f"may not run on {a.name}" in status["message"]
    event = wait_event(a.cluster, namespace, name, lambda e: e.get("reason") == "NotAllowedByOwner")
    assert event["type"] == "Warning"
    assert a.containers(pod["metadata"]["uid"]) == []
    return pod


@pytest.mark.parametrize("how", REFUSED_AT_CREATION + REFUSED_AT_BINDING)
def test_without_the_policy_vk_bridge_fails_a_strangers_pod_and_starts_nothing(
        admission_policy_off: None, virtual_node: VirtualNode, user_a: users.User, user_b: users.User,
        kubectl_as: Callable[[users.User], KubectlAs], b_namespace: str, testbox_image: str, how: str) -> None:
    name = f"attack-{how.lower()}"
    proc = kubectl_as(user_b).create(attack_pod(name, b_namespace, testbox_image, attack_specs(virtual_node, user_a.name)[how]))
    assert proc.returncode == 0, proc.stderr  # the API server no longer stops it
    assert_refused_on_a(virtual_node, b_namespace, name)
    time.sleep(1.0)  # a container would show within this (vk_bridge decided before anything was made)
    assert a_docker(virtual_node, b_namespace) == []


def test_without_the_policy_a_deployments_pods_fail_on_the_desktop_and_start_nothing(
        admission_policy_off: None, deployments_for_b: None, virtual_node: VirtualNode, user_a: users.User,
        user_b: users.User, kubectl_as: Callable[[users.User], KubectlAs], b_namespace: str, testbox_image: str) -> None:
    obj = workload_object("Deployment", "attack-deployment", b_namespace, testbox_image,
                          attack_specs(virtual_node, user_a.name)["nodeName"])
    assert kubectl_as(user_b).create(obj).returncode == 0
    found: list[dict[str, Any]] = []

    def failed() -> bool:
        items = virtual_node.cluster.kubectl_json("get", "pods", "-n", b_namespace, "-l", "app=attack-deployment")["items"]
        found[:] = [p for p in items if p["status"].get("phase") == "Failed"]
        return bool(found)

    wait_until(failed, 90, "a Failed pod of the Deployment")
    # The ReplicaSet replaces each refused pod; they all end the same way (as pods a kubelet rejects).
    kubectl_as(user_b)("delete", "deployment", "attack-deployment", "-n", b_namespace, "--wait=false")
    for pod in found:
        assert pod["spec"]["nodeName"] == virtual_node.name
        assert pod["status"]["reason"] == "NotAllowedByOwner"
        assert virtual_node.containers(pod["metadata"]["uid"]) == []
    assert a_docker(virtual_node, b_namespace) == []


# --- the owner's own pods: allocatable, like a kubelet ---------------------------------------------


@pytest.mark.parametrize("resource,amount,reason", [
    ("cpu", "1000", "OutOfcpu"),
    ("memory", "1000Ti", "OutOfmemory"),
    ("example.com/dongle", "1", "OutOfexample.com/dongle"),
])
def test_a_pod_of_the_owner_that_exceeds_the_desktops_allocatable_is_refused(
        virtual_node: VirtualNode, user_a: users.User, kubectl_as: Callable[[users.User], KubectlAs],
        owner_namespace: str, resource: str, amount: str, reason: str) -> None:
    assert owner_namespace == user_a.namespace
    name = f"too-big-{reason.lower().replace('.', '-').replace('/', '-')}"
    body = virtual_node.pod(name, [{"name": "main", "command": ["sleep", "60"],
                                    "resources": {"requests": {resource: amount}, "limits": {resource: amount}}}],
                            nodeName=virtual_node.name)
    body["metadata"]["labels"] = dict(TEST_LABELS)  # owner_namespace removes it
    proc = kubectl_as(user_a).create({**body, "metadata": {**body["metadata"], "namespace": owner_namespace}})
    assert proc.returncode == 0, proc.stderr  # A may: it is A's desktop
    pod = virtual_node.wait_phase(owner_namespace, name, "Failed", "Running", timeout=60)
    status = pod["status"]
    assert (status["phase"], status.get("reason")) == ("Failed", reason), json.dumps(status)
    assert status["message"].startswith(f"Node didn't have enough resource: {resource}, requested: ")
    allocatable = virtual_node.node()["status"]["allocatable"].get(resource, "0")
    assert status["message"].endswith(f"capacity: {quantity_units(resource, allocatable)}")
    event = wait_event(virtual_node.cluster, owner_namespace, name, lambda e: e.get("reason") == reason)
    assert event["type"] == "Warning"
    assert virtual_node.containers(pod["metadata"]["uid"]) == []


def quantity_units(resource: str, value: str) -> int:
    from kod import quantity

    return quantity.to_millicores(value) if resource == "cpu" else quantity.to_bytes(value)


# --- adoption after a restart ---------------------------------------------------------------------


def test_a_running_pod_the_owner_no_longer_allows_is_stopped_when_vk_bridge_adopts_it(
        crash_node: VirtualNode, kube_namespace: str) -> None:
    """A namespace allowed (admission_allow), a pod of it running on the desktop; then the owner
    takes the allowance back: vk_bridge restarts with the new settings, re-checks the pods it
    adopts, stops this one (its containers go) and marks it Failed with the reason."""
    vn, ns = crash_node, kube_namespace
    allowing = crash_settings().model_copy(update={"admission_allow": [ns]})
    try:
        desktop_stack.up(Progress(), cluster=vn.cluster, settings=allowing)
        assert node_registry.entries(vn.cluster)[vn.name] == f"{vn.owner_namespace},{ns}"
        vn.create(ns, vn.pod("guest", [{"name": "main", "command": ["sleep", "3600"]}]))
        running = vn.wait_phase(ns, "guest", "Running", "Failed")
        assert running["status"]["phase"] == "Running", json.dumps(running["status"])
        uid = running["metadata"]["uid"]
        assert [c for c in vn.containers(uid) if c.status == "running"]
        desktop_stack.up(Progress(), cluster=vn.cluster, settings=crash_settings())  # vk_bridge restarts
        pod = vn.wait_phase(ns, "guest", "Failed", timeout=90)
        assert pod["status"]["reason"] == "NotAllowedByOwner", json.dumps(pod["status"])
        assert pod["metadata"]["uid"] == uid
        wait_until(lambda: vn.containers(uid) == [], 60, "the refused pod's containers gone")
        wait_event(vn.cluster, ns, "guest", lambda e: e.get("reason") == "NotAllowedByOwner")
    finally:
        desktop_stack.up(Progress(), cluster=vn.cluster, settings=crash_settings())


# --- the registry missing ---------------------------------------------------------------------------


@pytest.fixture
def registry_missing(cluster: Any, virtual_node: VirtualNode, user_b: users.User) -> Iterator[dict[str, str]]:
    """The policy's parameter (the registry of virtual nodes) deleted for one test, then restored."""
    saved = node_registry.entries(cluster)
    cluster.kubectl("delete", "configmap", node_registry.NAME, "-n", node_registry.NAMESPACE)
    try:
        wait_until(lambda: not policy_refuses(cluster, user_b.namespace, virtual_node.name), 30, "the registry gone")
        yield saved
    finally:
        for node, value in saved.items():
            node_registry.register(cluster, node, value.split(","))
        wait_until(lambda: policy_refuses(cluster, user_b.namespace, virtual_node.name), 30, "the registry back")


def test_without_the_registry_the_api_server_lets_pods_through_and_vk_bridge_refuses_them(
        registry_missing: dict[str, str], virtual_node: VirtualNode, user_a: users.User, user_b: users.User,
        kubectl_as: Callable[[users.User], KubectlAs], b_namespace: str, testbox_image: str) -> None:
    """Without its parameter the policy is skipped (the binding's parameterNotFoundAction is
    Allow: Deny would refuse every pod of the cluster), so the API server admits B's pods; vk_bridge,
    which needs no registry, still fails them on A's desktop and starts nothing."""
    assert virtual_node.name in registry_missing
    specs = attack_specs(virtual_node, user_a.name)
    for how in ("nodeName", "nodeSelector-virtual-kubelet-labels"):
        name = f"unregistered-{how.lower()}"
        proc = kubectl_as(user_b).create(attack_pod(name, b_namespace, testbox_image, specs[how]))
        assert proc.returncode == 0, proc.stderr
        assert_refused_on_a(virtual_node, b_namespace, name)
    assert a_docker(virtual_node, b_namespace) == []
