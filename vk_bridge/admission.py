"""Admission on the virtual node: which of the pods bound to this node may run here at all.

    admission = Admission(settings.admission, node_name="desktop-x", node_user="alice",
                          node=lambda: NodeFacts.of(last_node_object))
    decision = admission.admit(pod, admitted)   # admitted: the pods this node already runs
    if not decision.allowed:                    # -> phase Failed, decision.reason/.message, an Event
        ...

A pod is checked once, before anything of it is created, and again when a running pod is adopted
after a restart of vk_bridge. The checks, in this order (the first failure is the answer, as with
the kubelet):

1. **The owner's rule** (no kubelet has one): only pods of the owner's namespace (`kod-<user>`,
   `kod.names.user_namespace`) run here by default; other namespaces, or identities (namespace +
   service account), only when listed in `admission.allow`. Reason `NotAllowedByOwner`. It is
   checked first, so that a stranger's pod learns nothing about this node's resources.
2. **The kubelet's own admission** (`pkg/kubelet/lifecycle/predicate.go`, Kubernetes 1.35), with
   its reasons and messages: the OS label and field (`PodOSSelectorNodeLabelDoesNotMatch`,
   `PodOSNotSupported`); resources (`OutOfpods`, `OutOfcpu`, `OutOfmemory`,
   `OutOfephemeral-storage`, `OutOf<extended resource>`: the requests of the admitted,
   non-terminal pods plus the new one, against allocatable); required node affinity and
   nodeSelector (`NodeAffinity`); `spec.nodeName` (`NodeName`); taints (`TaintToleration`).

Two places where this is stricter than a kubelet, on purpose:

- Taints: a kubelet checks only NoExecute taints (the scheduler checks NoSchedule ones, but a pod
  that sets `spec.nodeName` itself never meets the scheduler). Here a pod must also tolerate the
  node's NoSchedule taints (the `kod.io/virtual-node` taint among them), except the node
  lifecycle controller's transient `node.kubernetes.io/*` ones (unreachable, not-ready,
  pressure), which would otherwise fail every running pod adopted after a restart.
- Extended resources the node does not have at all: a kubelet drops them from the request and
  lets its device manager fail the pod later; here they are `OutOf<resource>` at once.

Host ports are not checked here: the Docker sidecar's policy refuses every hostPort.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kod import errors, names, quantity
from kod.log import get_logger
from vk_bridge.settings import AdmissionSettings

log = get_logger(__name__)

#: The owner's rule (this project's).
NOT_ALLOWED_BY_OWNER = "NotAllowedByOwner"
#: The kubelet's reasons (pkg/kubelet/lifecycle/predicate.go and the scheduler plugins' names).
POD_OS_SELECTOR_MISMATCH = "PodOSSelectorNodeLabelDoesNotMatch"
POD_OS_NOT_SUPPORTED = "PodOSNotSupported"
NODE_AFFINITY = "NodeAffinity"
NODE_NAME = "NodeName"
TAINT_TOLERATION = "TaintToleration"
OUT_OF = "OutOf"  #: + the resource name: OutOfcpu, OutOfmemory, OutOfpods, OutOfnvidia.com/gpu

#: The scheduler plugins' descriptions, which the kubelet puts in its messages.
_AFFINITY_DESC = "node(s) didn't match Pod's node affinity/selector"
_NODE_NAME_DESC = "node(s) didn't match the requested node name"
_TAINT_DESC = "node(s) had taints that the pod didn't tolerate"
#: Taints the node lifecycle controller puts on and takes off by itself (node conditions):
#: transient, so a NoSchedule one of them never fails a pod here (NoExecute ones still do, as on
#: a kubelet; every pod tolerates not-ready/unreachable NoExecute for 300 s by default).
LIFECYCLE_TAINT_PREFIX = "node.kubernetes.io/"
NATIVE_RESOURCES = ("cpu", "memory", "ephemeral-storage")
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
OS = "linux"


@dataclass(frozen=True)
class Decision:
    """The answer for one pod: allowed, or refused with the kubelet-style reason and message."""

    allowed: bool
    reason: str = ""
    message: str = ""


ALLOWED = Decision(True)


@dataclass(frozen=True)
class NodeFacts:
    """What admission needs to know about this node; read-only."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, Any]] = ()
    allocatable: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, node: Mapping[str, Any], *, allocatable: Mapping[str, str] | None = None) -> NodeFacts:
        """From a Node object as the API returns it; `allocatable` overrides its status's."""
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
        return cls(
            name=str(meta.get("name") or ""),
            labels=dict(meta.get("labels") or {}),
            taints=tuple(spec.get("taints") or ()),
            allocatable=dict(allocatable if allocatable is not None else status.get("allocatable") or {}),
        )


# --------------------------------------------------------------------------------------------
# The owner's rule
# --------------------------------------------------------------------------------------------


def service_account(pod: Mapping[str, Any]) -> str:
    """The pod's service account, as the ServiceAccount admission plugin sets it."""
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def identity_allowed(namespace: str, account: str, owner_namespace: str, allow: Iterable[str]) -> bool:
    """True when the owner lets pods of `namespace` running as `account` on the node: the
    owner's namespace, or an entry of `allow` that is the namespace, or namespace/account."""
    if namespace == owner_namespace:
        return True
    for entry in allow:
        ns, _, sa = entry.partition("/")
        if ns == namespace and (not sa or sa == account):
            return True
    return False


# --------------------------------------------------------------------------------------------
# Node affinity (k8s.io/component-helpers/scheduling/corev1/nodeaffinity)
# --------------------------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    try:
        return int(str(value), 10)
    except ValueError:
        return None


def _label_requirement(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), list(expr.get("values") or [])
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt"):
        have, want = (_int(labels[key]) if present else None), (_int(values[0]) if len(values) == 1 else None)
        if have is None or want is None:
            return False
        return (operator.gt if op == "Gt" else operator.lt)(have, want)
    return False  # an unknown operator matches nothing (the API server refuses it anyway)


def _field_requirement(expr: Mapping[str, Any], node_name: str) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), list(expr.get("values") or [])
    if key != "metadata.name" or len(values) != 1:
        return False
    if op == "In":
        return node_name == values[0]
    if op == "NotIn":
        return node_name != values[0]
    return False


def _term_matches(term: Mapping[str, Any], node: NodeFacts) -> bool:
    exprs, fields_ = term.get("matchExpressions") or [], term.get("matchFields") or []
    if not exprs and not fields_:
        return False  # an empty term selects no node
    return all(_label_requirement(e, node.labels) for e in exprs) and all(_field_requirement(f, node.name) for f in fields_)


def matches_node(pod: Mapping[str, Any], node: NodeFacts) -> bool:
    """The pod's nodeSelector and required node affinity select this node (GetRequiredNodeAffinity)."""
    spec = pod.get("spec") or {}
    selector = spec.get("nodeSelector") or {}
    if any(node.labels.get(k) != v for k, v in selector.items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return True
    return any(_term_matches(t, node) for t in required.get("nodeSelectorTerms") or [])


# --------------------------------------------------------------------------------------------
# Taints (k8s.io/api/core/v1 Toleration.ToleratesTaint)
# --------------------------------------------------------------------------------------------


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """One toleration tolerates one taint. Gt/Lt (the alpha TaintTolerationComparisonOperators
    feature, off by default in 1.35) tolerate nothing."""
    effect, key = toleration.get("effect") or "", toleration.get("key") or ""
    if effect and effect != taint.get("effect"):
        return False
    if key and key != taint.get("key"):
        return False
    op = toleration.get("operator") or "Equal"
    if op == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return op == "Exists"


def checked_taint(taint: Mapping[str, Any]) -> bool:
    """Whether admission requires this taint to be tolerated (see the module docstring)."""
    effect = taint.get("effect")
    if effect == "NoExecute":
        return True
    return effect == "NoSchedule" and not str(taint.get("key") or "").startswith(LIFECYCLE_TAINT_PREFIX)


def untolerated_taint(pod: Mapping[str, Any], taints: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The first checked taint of the node that none of the pod's tolerations tolerates."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in taints:
        if checked_taint(taint) and not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None


def taint_string(taint: Mapping[str, Any]) -> str:
    """key=value:effect, as kubectl prints taints."""
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key', '')}{value}:{taint.get('effect', '')}"


# --------------------------------------------------------------------------------------------
# Resources (k8s.io/component-helpers/resource PodRequests, and noderesources.Fits)
# --------------------------------------------------------------------------------------------


def _add(total: dict[str, Fraction], requests: Mapping[str, Any]) -> None:
    for name, value in requests.items():
        total[name] = total.get(name, Fraction(0)) + quantity.parse(value)


def _max_into(total: dict[str, Fraction], other: Mapping[str, Fraction]) -> None:
    for name, value in other.items():
        if value > total.get(name, Fraction(0)):
            total[name] = value


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Fraction]:
    """What the pod requests (resourcehelper.PodRequests without in-place resizing): the sum of
    its containers' requests; init containers run one at a time, so the pod needs the largest of
    them (plus the sidecars started before it), and sidecars (restartPolicy Always) add to the
    whole; pod-level requests (cpu, memory) replace the containers'; plus the pod's overhead.
    Raises InvalidInput for a malformed quantity."""
    spec = pod.get("spec") or {}
    total: dict[str, Fraction] = {}
    for c in spec.get("containers") or []:
        _add(total, (c.get("resources") or {}).get("requests") or {})
    sidecars: dict[str, Fraction] = {}
    init_max: dict[str, Fraction] = {}
    for c in spec.get("initContainers") or []:
        requests = (c.get("resources") or {}).get("requests") or {}
        if c.get("restartPolicy") == "Always":
            _add(total, requests)
            _add(sidecars, requests)
            use = dict(sidecars)
        else:
            use = dict(sidecars)
            _add(use, requests)
        _max_into(init_max, use)
    _max_into(total, init_max)
    pod_level = (spec.get("resources") or {}).get("requests") or {}
    for name in ("cpu", "memory"):
        if name in pod_level:
            total[name] = quantity.parse(pod_level[name])
    _add(total, spec.get("overhead") or {})
    return total


def _units(name: str, value: Fraction) -> int:
    """The kubelet's integer units in its messages: millicores for cpu, else whole units."""
    return quantity.milli_value(value) if name == "cpu" else quantity.int_value(value)


def _insufficient(name: str, requested: int, used: int, capacity: int) -> Decision:
    return Decision(False, f"{OUT_OF}{name}", f"Node didn't have enough resource: {name}, requested: {requested}, "
                                              f"used: {used}, capacity: {capacity}")


def request_units(pod: Mapping[str, Any]) -> dict[str, int]:
    """`pod_requests` in the kubelet's integer units (what its NodeInfo sums up)."""
    return {name: _units(name, value) for name, value in pod_requests(pod).items()}


def fits(pod: Mapping[str, Any], admitted: Sequence[Mapping[str, Any]], allocatable: Mapping[str, str]) -> Decision:
    """noderesources.Fits: the pod count, then cpu, memory, ephemeral-storage, then every other
    requested resource, against allocatable minus what the admitted pods request."""
    alloc = {k: _units(k, quantity.parse(v)) for k, v in allocatable.items()}
    max_pods = alloc.get("pods", 0)
    if len(admitted) + 1 > max_pods:
        return _insufficient("pods", 1, len(admitted), max_pods)
    want = request_units(pod)
    if not any(want.values()):
        return ALLOWED
    used: dict[str, int] = {}
    for other in admitted:
        for name, value in request_units(other).items():
            used[name] = used.get(name, 0) + value
    order = [*NATIVE_RESOURCES, *sorted(n for n in want if n not in NATIVE_RESOURCES)]
    for name in order:
        value = want.get(name, 0)
        if value > 0 and value > alloc.get(name, 0) - used.get(name, 0):
            return _insufficient(name, value, used.get(name, 0), alloc.get(name, 0))
    return ALLOWED


# --------------------------------------------------------------------------------------------
# The whole decision
# --------------------------------------------------------------------------------------------


def _predicate(name: str, desc: str, detail: str = "") -> Decision:
    return Decision(False, name, f"Predicate {name} failed: {desc}" + (f" ({detail})" if detail else ""))


class Admission:
    """The node's admission: `admit` decides for one pod. Pure and synchronous: callers that
    admit pods one after another (the pod sync loop, under its event loop) never race on the
    resources of two pods."""

    def __init__(self, settings: AdmissionSettings, *, node_name: str, node_user: str,
                 node: Callable[[], NodeFacts]) -> None:
        self.settings = settings
        self.node_name = node_name
        try:
            self.owner_namespace = settings.owner_namespace or names.user_namespace(node_user)
        except ValueError as exc:
            raise errors.InvalidInput(str(exc), hint="set admission.owner_namespace") from exc
        self._node = node

    def owner_rule(self, pod: Mapping[str, Any]) -> Decision:
        """Only the owner's namespace, and what `admission.allow` lists."""
        meta = pod.get("metadata") or {}
        namespace, account = str(meta.get("namespace") or ""), service_account(pod)
        if identity_allowed(namespace, account, self.owner_namespace, self.settings.allow):
            return ALLOWED
        allowed = ", ".join([self.owner_namespace, *self.settings.allow])
        return Decision(False, NOT_ALLOWED_BY_OWNER, (
            f"pod {namespace}/{meta.get('name', '')} (service account {account}) may not run on {self.node_name}: "
            f"the desktop's owner runs only pods of {allowed} here (vk_bridge setting admission.allow)"
        ))

    def admit(self, pod: Mapping[str, Any], admitted: Sequence[Mapping[str, Any]]) -> Decision:
        """Whether `pod` may run on this node, next to `admitted` (the pods already admitted
        that have not ended; `pod` itself is not among them)."""
        decision = self.owner_rule(pod)
        if not decision.allowed:
            return decision
        node = self._node()
        spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
        node_os = node.labels.get("kubernetes.io/os", OS)
        pod_os = (meta.get("labels") or {}).get("kubernetes.io/os")
        if pod_os is not None and pod_os != node_os:
            return Decision(False, POD_OS_SELECTOR_MISMATCH, "Failed to admit pod as the OS label doesn't match node OS label")
        if (spec.get("os") or {}).get("name", OS) != OS:
            return Decision(False, POD_OS_NOT_SUPPORTED, "Failed to admit pod as the OS field doesn't match node OS")
        try:
            decision = fits(pod, admitted, node.allocatable)
        except errors.InvalidInput as exc:  # the API server validates quantities: not expected
            return Decision(False, "UnexpectedAdmissionError", f"cannot read the pod's resource requests: {exc}")
        if not decision.allowed:
            return decision
        if not matches_node(pod, node):
            return _predicate(NODE_AFFINITY, _AFFINITY_DESC)
        if spec.get("nodeName") and spec["nodeName"] != node.name:
            return _predicate(NODE_NAME, _NODE_NAME_DESC)
        taint = untolerated_taint(pod, node.taints)
        if taint is not None:
            stricter = " (this node requires NoSchedule taints to be tolerated too)" if taint.get("effect") == "NoSchedule" else ""
            return _predicate(TAINT_TOLERATION, _TAINT_DESC, f"{taint_string(taint)}{stricter}")
        return ALLOWED


def admitted_and_running(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Of `pods`, those that still hold resources: not in a terminal phase."""
    return [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL_PHASES]
