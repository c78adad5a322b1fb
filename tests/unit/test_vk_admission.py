"""Admission on the virtual node (vk_bridge/admission.py): the owner's rule, and the kubelet's own
admission with its reasons and messages. Cases follow the kubelet's (pkg/kubelet/lifecycle/
predicate_test.go, TestGeneralPredicates) and the node affinity helper's, with the differences
this node makes on purpose (NoSchedule taints, missing extended resources)."""

from __future__ import annotations

from typing import Any

import pytest

from kod import errors
from vk_bridge import admission as adm
from vk_bridge.admission import Admission, NodeFacts
from vk_bridge.settings import AdmissionSettings, VkSettings

TAINT = {"key": "kod.io/virtual-node", "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": "kod.io/virtual-node", "operator": "Exists", "effect": "NoSchedule"}
LABELS = {"kubernetes.io/hostname": "desktop-a", "kubernetes.io/os": "linux", "type": "virtual-kubelet",
          "kod.io/desktop-of": "alice"}
ALLOCATABLE = {"cpu": "2", "memory": "4Gi", "pods": "10", "ephemeral-storage": "10Gi"}


def node(**changes: Any) -> NodeFacts:
    base: dict[str, Any] = {"name": "desktop-a", "labels": LABELS, "taints": (TAINT,), "allocatable": ALLOCATABLE}
    base.update(changes)
    return NodeFacts(**base)


def pod(name: str = "p", namespace: str = "kod-alice", *, requests: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None, phase: str = "Pending", **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "x"}
    if requests:
        container["resources"] = {"requests": requests}
    body: dict[str, Any] = {"nodeName": "desktop-a", "containers": [container],
                            "tolerations": [TOLERATION] if tolerations is None else tolerations}
    body.update(spec)
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"u-{name}"}, "spec": body,
            "status": {"phase": phase}}


def admission(facts: NodeFacts | None = None, **settings: Any) -> Admission:
    f = facts or node()
    return Admission(AdmissionSettings(**settings), node_name="desktop-a", node_user="alice", node=lambda: f)


# --- the owner's rule ------------------------------------------------------------------------------


def test_the_owners_namespace_is_kod_user_and_its_pods_are_admitted() -> None:
    a = admission()
    assert a.owner_namespace == "kod-alice"
    assert a.admit(pod(), []) == adm.ALLOWED


@pytest.mark.parametrize("namespace,account,allow,allowed", [
    ("kod-bob", "default", [], False),
    ("default", "default", [], False),
    ("kube-system", "default", [], False),
    ("team", "default", ["team"], True),                 # a namespace: any service account of it
    ("team", "builder", ["team"], True),
    ("ci", "builder", ["ci/builder"], True),             # an identity: that account only
    ("ci", "default", ["ci/builder"], False),
    ("ci-other", "builder", ["ci/builder"], False),      # no prefix matching
    ("kod-alice", "anything", [], True),
])
def test_other_namespaces_and_identities_only_when_listed(namespace: str, account: str, allow: list[str],
                                                           allowed: bool) -> None:
    p = pod(namespace=namespace, serviceAccountName=account)
    decision = admission(allow=allow).admit(p, [])
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason == "NotAllowedByOwner"
        assert f"pod {namespace}/p (service account {account}) may not run on desktop-a" in decision.message
        assert "kod-alice" in decision.message and "admission.allow" in decision.message


def test_the_owners_rule_comes_before_anything_that_would_tell_about_the_node() -> None:
    """A stranger's pod that also asks for too much learns only that it is not allowed."""
    decision = admission().admit(pod(namespace="kod-bob", requests={"cpu": "100"}, tolerations=[]), [])
    assert decision.reason == "NotAllowedByOwner"


def test_an_explicit_owner_namespace_replaces_the_default() -> None:
    a = admission(owner_namespace="desk")
    assert a.admit(pod(namespace="desk"), []).allowed
    assert not a.admit(pod(namespace="kod-alice"), []).allowed


@pytest.mark.parametrize("field,value", [
    ("owner_namespace", "Not_A_Namespace"),
    ("allow", ["ok", "no/"]),
    ("allow", ["a/b/c"]),
    ("allow", ["UPPER"]),
])
def test_bad_admission_settings_are_refused_with_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        VkSettings.model_validate({"admission": {field: value}})


def test_a_user_name_that_makes_no_namespace_is_a_settings_error() -> None:
    with pytest.raises(errors.InvalidInput, match="owner_namespace"):
        Admission(AdmissionSettings(), node_name="n", node_user="___", node=node)


# --- taints ---------------------------------------------------------------------------------------


def test_a_pod_that_does_not_tolerate_the_virtual_node_taint_is_refused_though_a_kubelet_would_not() -> None:
    decision = admission().admit(pod(tolerations=[]), [])
    assert decision.reason == "TaintToleration"
    assert decision.message.startswith("Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate")
    assert "kod.io/virtual-node=true:NoSchedule" in decision.message and "NoSchedule taints" in decision.message


@pytest.mark.parametrize("toleration,ok", [
    ({"operator": "Exists"}, True),                                          # tolerates everything
    ({"key": "kod.io/virtual-node", "operator": "Exists"}, True),
    ({"key": "kod.io/virtual-node", "value": "true"}, True),                 # empty operator is Equal
    ({"key": "kod.io/virtual-node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}, True),
    ({"key": "kod.io/virtual-node", "operator": "Equal", "value": "false"}, False),
    ({"key": "kod.io/virtual-node", "operator": "Exists", "effect": "NoExecute"}, False),
    ({"key": "other", "operator": "Exists"}, False),
    ({"key": "kod.io/virtual-node", "operator": "Gt", "value": "0"}, False),  # alpha comparison: off
])
def test_tolerations_match_as_on_kubernetes(toleration: dict[str, Any], ok: bool) -> None:
    assert admission().admit(pod(tolerations=[toleration]), []).allowed is ok


def test_noexecute_taints_are_checked_like_a_kubelet_prefer_no_schedule_is_not() -> None:
    facts = node(taints=(TAINT, {"key": "drain", "effect": "NoExecute"}, {"key": "soft", "effect": "PreferNoSchedule"}))
    decision = admission(facts).admit(pod(), [])
    assert decision.reason == "TaintToleration" and "drain:NoExecute" in decision.message
    ok = pod(tolerations=[TOLERATION, {"key": "drain", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}])
    assert admission(facts).admit(ok, []).allowed


def test_the_node_lifecycle_controllers_noschedule_taints_do_not_fail_running_pods() -> None:
    """After vk_bridge was away, the node carries node.kubernetes.io/unreachable:NoSchedule until
    it is Ready again: adopted pods must not fail on it."""
    facts = node(taints=(TAINT, {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}))
    assert admission(facts).admit(pod(), []).allowed
    facts = node(taints=(TAINT, {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}))
    assert admission(facts).admit(pod(), []).reason == "TaintToleration"


# --- node affinity --------------------------------------------------------------------------------


def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


@pytest.mark.parametrize("spec,ok", [
    ({"nodeSelector": {"kubernetes.io/hostname": "desktop-a"}}, True),
    ({"nodeSelector": {"kubernetes.io/hostname": "desktop-b"}}, False),
    ({"nodeSelector": {"type": "virtual-kubelet", "kod.io/desktop-of": "alice"}}, True),
    ({"nodeSelector": {"kod.io/desktop-of": "bob"}}, False),
    ({"affinity": affinity({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["desktop-a"]}]})}, True),
    ({"affinity": affinity({"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["desktop-a"]}]})}, False),
    ({"affinity": affinity({"matchExpressions": [{"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]}]})}, False),
    ({"affinity": affinity({"matchExpressions": [{"key": "kod.io/desktop-of", "operator": "DoesNotExist"}]})}, False),
    ({"affinity": affinity({"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["yes"]}]})}, True),
    ({"affinity": affinity({"matchExpressions": [{"key": "kod.io/desktop-of", "operator": "Exists"}]})}, True),
    ({"affinity": affinity({})}, False),                                              # an empty term: no node
    ({"affinity": affinity({}, {"matchExpressions": [{"key": "type", "operator": "In", "values": ["virtual-kubelet"]}]})}, True),
    ({"affinity": affinity({"matchExpressions": [{"key": "type", "operator": "In", "values": ["virtual-kubelet"]}],
                            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["other"]}]})}, False),
])
def test_node_selector_and_required_affinity_as_the_scheduler_reads_them(spec: dict[str, Any], ok: bool) -> None:
    decision = admission().admit(pod(**spec), [])
    assert decision.allowed is ok
    if not ok:
        assert decision.reason == "NodeAffinity"
        assert decision.message == "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"


@pytest.mark.parametrize("op,value,ok", [("Gt", "3", True), ("Gt", "4", False), ("Lt", "5", True), ("Lt", "x", False)])
def test_gt_and_lt_compare_integers(op: str, value: str, ok: bool) -> None:
    facts = node(labels={**LABELS, "cores": "4"})
    spec = {"affinity": affinity({"matchExpressions": [{"key": "cores", "operator": op, "values": [value]}]})}
    assert admission(facts).admit(pod(**spec), []).allowed is ok


def test_another_node_name_is_refused_with_the_kubelets_reason() -> None:
    decision = admission().admit(pod(nodeName="machine2"), [])
    assert (decision.reason, decision.message) == ("NodeName", "Predicate NodeName failed: node(s) didn't match the requested node name")


def test_the_os_label_and_field_must_say_linux() -> None:
    labelled = pod()
    labelled["metadata"]["labels"] = {"kubernetes.io/os": "windows"}
    assert admission().admit(labelled, []).reason == "PodOSSelectorNodeLabelDoesNotMatch"
    assert admission().admit(pod(os={"name": "windows"}), []).reason == "PodOSNotSupported"


# --- resources ------------------------------------------------------------------------------------


def test_no_requests_always_fits() -> None:
    full = [pod(f"o{i}", requests={"cpu": "1"}) for i in range(2)]
    assert admission().admit(pod(), full).allowed


def test_not_enough_cpu_says_requested_used_and_capacity_in_millicores() -> None:
    facts = node(allocatable={"cpu": "10m", "memory": "20", "pods": "32"})
    others = [pod("o", requests={"cpu": "5m", "memory": "19"})]
    decision = admission(facts).admit(pod(requests={"cpu": "8m", "memory": "10"}), others)
    # The kubelet reports the first insufficient resource (cpu before memory).
    assert decision.reason == "OutOfcpu"
    assert decision.message == "Node didn't have enough resource: cpu, requested: 8, used: 5, capacity: 10"


def test_not_enough_memory() -> None:
    decision = admission().admit(pod(requests={"memory": "5Gi"}), [])
    assert decision.reason == "OutOfmemory"
    assert decision.message == f"Node didn't have enough resource: memory, requested: {5 * 2**30}, used: 0, capacity: {4 * 2**30}"


def test_the_sum_of_the_admitted_pods_counts_and_the_new_one_exactly_fits() -> None:
    others = [pod("o1", requests={"cpu": "1500m"})]
    assert admission().admit(pod(requests={"cpu": "500m"}), others).allowed
    assert admission().admit(pod(requests={"cpu": "501m"}), others).reason == "OutOfcpu"


def test_the_pod_count_is_capped_by_allocatable_pods() -> None:
    facts = node(allocatable={**ALLOCATABLE, "pods": "2"})
    others = [pod("o1"), pod("o2")]
    decision = admission(facts).admit(pod(), others)
    assert decision.reason == "OutOfpods"
    assert decision.message == "Node didn't have enough resource: pods, requested: 1, used: 2, capacity: 2"


def test_extended_resources_count_and_one_the_node_lacks_is_refused_at_once() -> None:
    facts = node(allocatable={**ALLOCATABLE, "example.com/aaa": "2"})
    assert admission(facts).admit(pod(requests={"example.com/aaa": "2"}), []).allowed
    decision = admission(facts).admit(pod(requests={"example.com/aaa": "1"}), [pod("o", requests={"example.com/aaa": "2"})])
    assert decision.reason == "OutOfexample.com/aaa"
    # A kubelet would drop a resource its node does not have and fail later in the device manager.
    decision = admission(facts).admit(pod(requests={"nvidia.com/gpu": "1"}), [])
    assert decision.reason == "OutOfnvidia.com/gpu" and "capacity: 0" in decision.message


def test_init_containers_need_the_largest_and_sidecars_add_up() -> None:
    body = pod(requests={"cpu": "500m"})
    body["spec"]["initContainers"] = [
        {"name": "i1", "resources": {"requests": {"cpu": "1"}}},
        {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}},
        {"name": "i2", "resources": {"requests": {"cpu": "1"}}},
    ]
    # max(1, 0.2 + 1) for the init phase vs 0.5 + 0.2 running: 1.2 cores.
    assert adm.request_units(body)["cpu"] == 1200
    body["spec"]["overhead"] = {"cpu": "100m"}
    assert adm.request_units(body)["cpu"] == 1300


def test_pod_level_requests_replace_the_containers() -> None:
    body = pod(requests={"cpu": "100m", "memory": "1Gi"}, resources={"requests": {"cpu": "3"}})
    assert admission().admit(body, []).reason == "OutOfcpu"


def test_only_pods_that_have_not_ended_hold_resources() -> None:
    ended = [pod("done", requests={"cpu": "2"}, phase="Succeeded"), pod("failed", requests={"cpu": "2"}, phase="Failed")]
    running = adm.admitted_and_running(ended + [pod("run", requests={"cpu": "1"})])
    assert [p["metadata"]["name"] for p in running] == ["run"]
    assert admission().admit(pod(requests={"cpu": "1"}), running).allowed


def test_node_facts_read_a_node_object() -> None:
    facts = NodeFacts.of({"metadata": {"name": "n", "labels": {"a": "b"}}, "spec": {"taints": [TAINT]},
                          "status": {"allocatable": {"cpu": "1"}}}, allocatable={"cpu": "2"})
    assert (facts.name, dict(facts.labels), list(facts.taints), dict(facts.allocatable)) == ("n", {"a": "b"}, [TAINT], {"cpu": "2"})
