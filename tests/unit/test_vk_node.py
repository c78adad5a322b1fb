"""The Node as data: labels (only those NodeRestriction lets a node set), taint, capacity precedence,
conditions whose transition times move only on change, the default name, the Lease, and which
existing Nodes are ours to adopt."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kod import errors, labels, wire
from vk_bridge.lease import lease_object, micro_time
from vk_bridge.node import conditions, label_forbidden_to_nodes, merged_capacity, node_labels, node_taint, ownership_problem
from kod.names import virtual_node_name
from vk_bridge.settings import NodeSettings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


def test_labels_and_taint_say_what_the_node_is() -> None:
    got = node_labels(NodeSettings(name="desktop-x", user="ann", labels={"extra": "1"}), "amd64")
    assert got[labels.NODE_TYPE] == labels.VIRTUAL_KUBELET
    assert got["kubernetes.io/os"] == "linux" and "kubernetes.io/role" not in got
    assert got["kubernetes.io/hostname"] == "desktop-x" and got[labels.DESKTOP_OF] == "ann" and got["extra"] == "1"
    assert not [k for k in got if label_forbidden_to_nodes(k)]
    assert node_taint() == {"key": "kod.io/virtual-node", "value": "true", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("key", "forbidden"),
    [("kubernetes.io/role", True), ("node-role.kubernetes.io/control-plane", True),
     ("node-restriction.kubernetes.io/owner", True), ("x.node-restriction.kubernetes.io/a", True),
     ("example.k8s.io/a", True), ("kubernetes.io/hostname", False), ("topology.kubernetes.io/zone", False),
     ("node.kubernetes.io/exclude-from-external-load-balancers", False), ("kubelet.kubernetes.io/x", False),
     ("kod.io/desktop-of", False), ("type", False)],
)
def test_labels_follow_noderestriction(key: str, forbidden: bool) -> None:
    assert label_forbidden_to_nodes(key) is forbidden


def test_extra_labels_noderestriction_would_refuse_are_a_clear_error() -> None:
    with pytest.raises(errors.InvalidInput, match="node-role.kubernetes.io/gpu.*NodeRestriction") as caught:
        node_labels(NodeSettings(name="desktop-x", labels={"node-role.kubernetes.io/gpu": ""}), "amd64")
    assert "kubectl label node desktop-x" in str(caught.value.hint)


def _node(labels_: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, object]:
    return {"metadata": {"name": "desktop-x", "labels": labels_, "annotations": annotations or {}}}


OURS = {"kod.io/managed-by": "kod-vk"}


@pytest.mark.parametrize(
    ("node", "problem"),
    [
        (_node({"type": "virtual-kubelet", labels.DESKTOP_OF: "ann"}, OURS), None),
        (_node({"type": "virtual-kubelet"}, OURS), None),
        (_node({"kubernetes.io/hostname": "desktop-x"}), "is not a kod virtual node"),
        (_node({"type": "virtual-kubelet"}), "is not a kod virtual node"),  # another virtual kubelet's
        (_node({"type": "virtual-kubelet", labels.DESKTOP_OF: "bob"}, OURS), "desktop user 'bob', not of 'ann'"),
    ],
)
def test_only_this_desktops_own_virtual_node_is_adopted(node: dict[str, object], problem: str | None) -> None:
    got = ownership_problem(node, NodeSettings(name="desktop-x", user="ann"))
    assert (got is None) if problem is None else (problem in (got or ""))


def test_capacity_comes_from_the_host_then_the_provider_then_the_settings() -> None:
    info = wire.NodeInfo(capacity={"cpu": "8", "memory": "16Gi", "pods": "110"}, allocatable={"cpu": "7"})
    capacity, allocatable = merged_capacity(info, {"pods": "250"})
    assert capacity == {"cpu": "8", "memory": "16Gi", "pods": "250"}
    assert allocatable == {"cpu": "7", "memory": "16Gi", "pods": "250"}
    host_only, _ = merged_capacity(None, {})
    assert int(host_only["cpu"]) >= 1 and host_only["memory"].endswith(("Ki", "Mi", "Gi")) and host_only["pods"] == "110"


def test_ready_follows_the_provider_and_transition_times_move_only_on_change() -> None:
    first = conditions(True, "kubelet is posting ready status", [], now=T0)
    ready = {c["type"]: c for c in first}["Ready"]
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"]) == ("True", "KubeletReady", "2026-01-01T00:00:00Z")
    same = {c["type"]: c for c in conditions(True, "kubelet is posting ready status", first, now=T1)}["Ready"]
    assert same["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same["lastHeartbeatTime"] == "2026-01-01T00:01:00Z"
    down = {c["type"]: c for c in conditions(False, "InterLink does not answer", first, now=T1)}["Ready"]
    assert (down["status"], down["reason"], down["lastTransitionTime"]) == ("False", "KubeletNotReady", "2026-01-01T00:01:00Z")
    assert {c["type"]: c["status"] for c in first}["MemoryPressure"] == "False"


@pytest.mark.parametrize(("host", "name"), [("vm", "desktop-vm"), ("Laptop_7.Home", "desktop-laptop-7.home"), ("", "desktop-localhost")])
def test_default_node_name_is_a_valid_dns_name(host: str, name: str) -> None:
    assert virtual_node_name(host or "---") == name
    NodeSettings(name=virtual_node_name(host or "---"))


def test_bad_node_names_are_refused() -> None:
    with pytest.raises(ValueError, match="DNS-1123"):
        NodeSettings(name="Not_Valid")


def test_the_lease_is_owned_by_the_node_and_uses_micro_time() -> None:
    lease = lease_object("desktop-x", "node-uid", 40, now=T0)
    assert lease["metadata"]["namespace"] == "kube-node-lease"
    assert lease["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": "desktop-x", "uid": "node-uid"}]
    assert lease["spec"] == {"holderIdentity": "desktop-x", "leaseDurationSeconds": 40, "renewTime": "2026-01-01T00:00:00.000000Z"}
    assert micro_time(T1) == "2026-01-01T00:01:00.000000Z"
