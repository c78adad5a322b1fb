"""The Node as data: labels, taint, capacity precedence, conditions whose transition times move only
on change, the default name, and the Lease."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kod import labels, wire
from vk_bridge.lease import lease_object, micro_time
from vk_bridge.node import conditions, merged_capacity, node_labels, node_taint
from vk_bridge.settings import NodeSettings, default_node_name

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


def test_labels_and_taint_say_what_the_node_is() -> None:
    got = node_labels(NodeSettings(name="desktop-x", user="ann", labels={"extra": "1"}), "amd64")
    assert got[labels.NODE_TYPE] == labels.VIRTUAL_KUBELET
    assert got["kubernetes.io/os"] == "linux" and got["kubernetes.io/role"] == "agent"
    assert got["kubernetes.io/hostname"] == "desktop-x" and got[labels.DESKTOP_OF] == "ann" and got["extra"] == "1"
    assert node_taint() == {"key": "kod.io/virtual-node", "value": "true", "effect": "NoSchedule"}


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
    assert default_node_name(host or "---") == name
    NodeSettings(name=default_node_name(host or "---"))


def test_bad_node_names_are_refused() -> None:
    with pytest.raises(ValueError, match="DNS-1123"):
        NodeSettings(name="Not_Valid")


def test_the_lease_is_owned_by_the_node_and_uses_micro_time() -> None:
    lease = lease_object("desktop-x", "node-uid", 40, now=T0)
    assert lease["metadata"]["namespace"] == "kube-node-lease"
    assert lease["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": "desktop-x", "uid": "node-uid"}]
    assert lease["spec"] == {"holderIdentity": "desktop-x", "leaseDurationSeconds": 40, "renewTime": "2026-01-01T00:00:00.000000Z"}
    assert micro_time(T1) == "2026-01-01T00:01:00.000000Z"
