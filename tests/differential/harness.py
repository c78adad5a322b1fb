"""Run a corpus on the real node and on the virtual node at once, and collect both views.

    sides = [Side("real", real_ns, {"kubernetes.io/hostname": "kod-worker"}),
             Side("virtual", owner_ns, {"kubernetes.io/hostname": vnode})]
    result = run(cluster, corpus.cases(), sides, label=("kod.io/differential", run_id))
    result.views["oom"]["virtual"]        # compare.view of the pod on the virtual node

Every pod (and the shared ConfigMap and Secret) is created at once in each side's namespace,
with the same name and spec but for its node selector; then one `kubectl get pods -o json` per
interval (for all pods of both sides) tells when each settles (corpus.Case.settle, then its
`linger`), when that side's pod is recorded. Logs are read once every pod is recorded; events of
both namespaces once, at the end. Cleanup is the caller's (everything carries `label`).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kod import labels
from localenv.handle import ClusterHandle
from tests.differential import compare
from tests.differential.corpus import SHARED_OBJECTS, Case

#: Seconds between two looks at the pods.
POLL_SECONDS = 1.0
#: Log reads at once.
LOG_WORKERS = 6


@dataclass(frozen=True)
class Side:
    """One node to run the corpus on."""

    name: str
    namespace: str
    node_selector: dict[str, str]


@dataclass
class Result:
    """What the run saw: case -> side -> view, and the cases that never settled on a side."""

    views: dict[str, dict[str, compare.View]] = field(default_factory=dict)
    unsettled: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    #: case -> side -> "reason: message" of each event (not compared: for reading a run).
    events: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: case -> side -> the pod's status as recorded (not compared: for reading a run).
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)


def placed(case: Case, side: Side, label: tuple[str, str]) -> dict[str, Any]:
    """The case's pod for `side`: its node selector and the virtual node's toleration (harmless
    on the real node, so that the two specs differ only in the selector)."""
    pod = case.pod()
    pod["metadata"]["labels"][label[0]] = label[1]
    pod["spec"]["nodeSelector"] = dict(side.node_selector)
    pod["spec"]["tolerations"] = [{"key": labels.VIRTUAL_NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    return pod


def _labelled(obj: Mapping[str, Any], label: tuple[str, str]) -> dict[str, Any]:
    out = copy.deepcopy(dict(obj))
    out["metadata"].setdefault("labels", {})[label[0]] = label[1]
    return out


def _statuses(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return list(status.get("containerStatuses") or []) + list(status.get("initContainerStatuses") or [])


def settled(case: Case, pod: Mapping[str, Any]) -> bool:
    """Whether `pod` shows what `case` is about (corpus.Case.settle)."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    kind, _, arg = case.settle.partition(":")
    if kind == "terminal":
        # And its sandbox gone: a kubelet reports the phase first and PodReadyToStartContainers
        # False once it has torn the sandbox down, which took seconds on a loaded kod-worker.
        sandbox = [c.get("status") for c in status.get("conditions") or [] if c.get("type") == "PodReadyToStartContainers"]
        return phase in ("Succeeded", "Failed") and sandbox != ["True"]
    if kind == "ready":
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    if kind == "running":
        main = status.get("containerStatuses") or []
        return len(main) == len(case.containers) and all("running" in (c.get("state") or {}) for c in main)
    if kind == "restarted":
        return any(int(c.get("restartCount") or 0) >= 1 for c in _statuses(pod))
    if kind == "waiting":
        return any(((c.get("state") or {}).get("waiting") or {}).get("reason") == arg for c in _statuses(pod))
    if kind == "container-done":
        return any(c.get("name") == arg and "terminated" in (c.get("state") or {})
                   for c in status.get("containerStatuses") or [])
    raise ValueError(f"unknown settle {case.settle!r} of {case.name}")


def _logs(cluster: ClusterHandle, namespace: str, pod: str, container: str) -> str | None:
    proc = cluster.kubectl("logs", pod, "-n", namespace, "-c", container, check=False, timeout=30)
    return proc.stdout if proc.returncode == 0 else None


def _events(cluster: ClusterHandle, namespace: str) -> dict[str, list[tuple[str, str]]]:
    """Pod uid -> (reason, message) of its events."""
    out: dict[str, list[tuple[str, str]]] = {}
    for ev in cluster.kubectl_json("get", "events", "-n", namespace)["items"]:
        obj = ev.get("involvedObject") or {}
        if obj.get("kind") == "Pod" and obj.get("uid"):
            out.setdefault(obj["uid"], []).append((ev.get("reason", ""), ev.get("message", "")))
    return out


def run(cluster: ClusterHandle, cases: Sequence[Case], sides: Sequence[Side], *, label: tuple[str, str],
        timeout: float = 120.0) -> Result:
    """Run `cases` on every side at once; see the module docstring."""
    started = time.monotonic()
    by_name = {c.name: c for c in cases}
    for side in sides:
        objects = [_labelled(o, label) for o in SHARED_OBJECTS] + [placed(c, side, label) for c in cases]
        cluster.apply(*objects, namespace=side.namespace)

    namespaces = {s.namespace: s for s in sides}
    settled_at: dict[tuple[str, str], float] = {}
    recorded: dict[tuple[str, str], dict[str, Any]] = {}
    wanted = {(c.name, s.name) for c in cases for s in sides}
    deadline = time.monotonic() + timeout
    last: dict[tuple[str, str], dict[str, Any]] = {}
    while set(recorded) != wanted and time.monotonic() < deadline:
        items = cluster.kubectl_json("get", "pods", "-A", "-l", f"{label[0]}={label[1]}")["items"]
        now = time.monotonic()
        for pod in items:
            side = namespaces.get(pod["metadata"]["namespace"])
            case = by_name.get(pod["metadata"]["name"])
            if side is None or case is None:
                continue
            key = (case.name, side.name)
            last[key] = pod
            if key in recorded:
                continue
            if key not in settled_at and settled(case, pod):
                settled_at[key] = now
            if key in settled_at and now - settled_at[key] >= case.linger:
                recorded[key] = pod
        time.sleep(POLL_SECONDS)

    result = Result()
    for key in wanted - set(recorded):
        result.unsettled.setdefault(key[0], []).append(key[1])
        if key in last:
            recorded[key] = last[key]

    reads = [(key, st["name"]) for key, pod in recorded.items() for st in _statuses(pod)]
    side_ns = {s.name: s.namespace for s in sides}
    with ThreadPoolExecutor(LOG_WORKERS) as pool:
        texts = list(pool.map(lambda r: _logs(cluster, side_ns[r[0][1]], r[0][0], r[1]), reads))
    logs: dict[tuple[str, str], dict[str, str | None]] = {}
    for (key, container), text in zip(reads, texts):
        logs.setdefault(key, {})[container] = text
    events_by_ns = {ns: _events(cluster, ns) for ns in namespaces}

    for (case, side_name), pod in recorded.items():
        events = events_by_ns[side_ns[side_name]].get(pod["metadata"]["uid"], [])
        result.events.setdefault(case, {})[side_name] = [f"{r}: {m}" for r, m in events]
        result.statuses.setdefault(case, {})[side_name] = pod.get("status") or {}
        v = compare.view(pod, logs.get((case, side_name), {}), sorted({r for r, _ in events}))
        v["settled"] = "no" if side_name in result.unsettled.get(case, []) else "yes"
        result.views.setdefault(case, {})[side_name] = v
    result.seconds = time.monotonic() - started
    return result


def dump(result: Result) -> str:
    """The views, as JSON, for a failing test's output."""
    return json.dumps({"views": result.views, "events": result.events, "statuses": result.statuses}, indent=1,
                      sort_keys=True)
