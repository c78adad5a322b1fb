"""From the sidecar's `PodStatus` to the Kubernetes pod status the kubelet would write.

`desired_status` computes the whole status (phase, the five conditions, container statuses, IPs,
start time) from what InterLink reports and what the API server holds now; `status_patch` returns
the merge patch that gets there, or None when the API already says it. Comparing with the API's
copy (not with what was last sent) makes the write-back self-healing: when the node lifecycle
controller marks pods NotReady during an outage, the next event puts them right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kod import wire

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
#: Conditions this module owns; any other condition (set by someone else) is kept as it is.
OWN_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
_CONDITION_ORDER = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")


def k8s_time(value: datetime | None) -> str | None:
    """RFC 3339 in UTC, to the second: the form the API server stores and returns."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _state(state: wire.ContainerState) -> dict[str, Any]:
    if state.terminated is not None:
        t = state.terminated
        out: dict[str, Any] = {"exitCode": t.exitCode}
        for key in ("signal", "reason", "message", "containerID"):
            if getattr(t, key) is not None:
                out[key] = getattr(t, key)
        if t.containerID:
            out["containerID"] = container_id(t.containerID)
        if t.startedAt:
            out["startedAt"] = k8s_time(t.startedAt)
        if t.finishedAt:
            out["finishedAt"] = k8s_time(t.finishedAt)
        return {"terminated": out}
    if state.running is not None:
        started = k8s_time(state.running.startedAt)
        return {"running": {"startedAt": started} if started else {}}
    if state.waiting is not None:
        w = {k: v for k, v in (("reason", state.waiting.reason), ("message", state.waiting.message)) if v}
        return {"waiting": w}
    return {}


def container_id(value: str) -> str:
    """`docker://<id>`: Kubernetes wants the runtime's scheme in front of the id."""
    return value if "://" in value else f"docker://{value}"


def _container_status(status: wire.ContainerStatus | None, spec: Mapping[str, Any], waiting_reason: str) -> dict[str, Any]:
    if status is None:
        return {
            "name": spec["name"],
            "state": {"waiting": {"reason": waiting_reason}},
            "lastState": {},
            "ready": False,
            "started": False,
            "restartCount": 0,
            "image": spec.get("image", ""),
            "imageID": "",
        }
    out: dict[str, Any] = {
        "name": status.name,
        "state": _state(status.state) or {"waiting": {"reason": waiting_reason}},
        "lastState": _state(status.lastState),
        "ready": bool(status.ready),
        "started": bool(status.started) if status.started is not None else status.state.running is not None,
        "restartCount": status.restartCount,
        "image": status.image or spec.get("image", ""),
        "imageID": status.imageID or "",
    }
    if status.containerID:
        out["containerID"] = container_id(status.containerID)
    return out


def _statuses(
    reported: Sequence[wire.ContainerStatus], specs: Sequence[Mapping[str, Any]], waiting_reason: str
) -> list[dict[str, Any]]:
    by_name = {s.name: s for s in reported}
    return [_container_status(by_name.get(spec["name"]), spec, waiting_reason) for spec in specs]


def _condition(
    ctype: str, ok: bool, current: Mapping[str, Mapping[str, Any]], now: str, reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": ctype, "status": "True" if ok else "False", "lastProbeTime": None}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    old = current.get(ctype)
    same = old is not None and all(old.get(k) == cond.get(k) for k in ("status", "reason", "message"))
    cond["lastTransitionTime"] = old.get("lastTransitionTime") if same and old else now
    return cond


def desired_status(
    pod: Mapping[str, Any], remote: wire.PodStatus, *, host_ips: Sequence[str], now: datetime | None = None
) -> dict[str, Any]:
    """The pod status to write, given the API's pod and the sidecar's report."""
    now_s = k8s_time(now or datetime.now(UTC)) or ""
    spec = pod.get("spec") or {}
    current = pod.get("status") or {}
    current_conditions = {c.get("type"): c for c in current.get("conditions") or [] if c.get("type")}

    phase = remote.phase
    if current.get("phase") in TERMINAL_PHASES and phase not in TERMINAL_PHASES:
        phase = current["phase"]  # Kubernetes forbids leaving a terminal phase; the API's copy wins.
    terminal = phase in TERMINAL_PHASES

    init_specs = spec.get("initContainers") or []
    main_specs = spec.get("containers") or []
    # What a container that has no status yet is waiting for: the kubelet's reasons; a pod that
    # will never run (refused) shows its own reason, which `kubectl get pods` then prints.
    if terminal and remote.reason:
        init_waiting = main_waiting = remote.reason
    else:
        init_waiting = "PodInitializing"
        main_waiting = "PodInitializing" if init_specs else "ContainerCreating"
    init_statuses = _statuses(remote.initContainerStatuses, init_specs, init_waiting)
    main_statuses = _statuses(remote.containerStatuses, main_specs, main_waiting)

    # Initialized: every init container ran to completion (a restartable "sidecar" init
    # container only needs to have started).
    incomplete = []
    for spec_c, st in zip(init_specs, init_statuses, strict=True):
        term = st["state"].get("terminated")
        if spec_c.get("restartPolicy") == "Always":
            if not st.get("started") and not term:
                incomplete.append(spec_c["name"])
        elif not (term and term.get("exitCode") == 0):
            incomplete.append(spec_c["name"])
    initialized = not incomplete or (terminal and phase == "Succeeded")

    # As the kubelet's ContainersReady: restartable init containers (sidecars) count too, first.
    unready = [
        st["name"] for spec_c, st in zip(init_specs, init_statuses, strict=True)
        if spec_c.get("restartPolicy") == "Always" and not st["ready"]
    ] + [st["name"] for st in main_statuses if not st["ready"]]
    containers_ready = not unready and not terminal
    # The kubelet tears the sandbox down once the pod is terminal.
    sandbox = not terminal and (bool(remote.podIP) or any(
        "running" in st["state"] or "terminated" in st["state"] for st in init_statuses + main_statuses
    ))
    if terminal:
        ready_reason, ready_msg = ("PodCompleted" if phase == "Succeeded" else "PodFailed"), None
    elif unready:
        ready_reason, ready_msg = "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]"
    else:
        ready_reason, ready_msg = None, None

    own = {
        "PodReadyToStartContainers": _condition("PodReadyToStartContainers", sandbox, current_conditions, now_s),
        "Initialized": _condition(
            "Initialized", initialized, current_conditions, now_s,
            "PodCompleted" if phase == "Succeeded" else (None if initialized else "ContainersNotInitialized"),
            None if initialized else f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
        "ContainersReady": _condition("ContainersReady", containers_ready, current_conditions, now_s, ready_reason, ready_msg),
        "Ready": _condition("Ready", containers_ready, current_conditions, now_s, ready_reason, ready_msg),
    }
    conditions = dict(current_conditions)
    conditions.update(own)
    if "PodScheduled" not in conditions:
        conditions["PodScheduled"] = _condition("PodScheduled", True, current_conditions, now_s)
    ordered = [conditions[t] for t in _CONDITION_ORDER if t in conditions]
    ordered += [c for t, c in conditions.items() if t not in _CONDITION_ORDER]

    status: dict[str, Any] = {
        "phase": phase,
        "conditions": ordered,
        "hostIP": host_ips[0] if host_ips else None,
        "hostIPs": [{"ip": ip} for ip in host_ips] or None,
        "podIP": remote.podIP or current.get("podIP"),
        "podIPs": [{"ip": remote.podIP}] if remote.podIP else current.get("podIPs"),
        "startTime": current.get("startTime") or k8s_time(remote.startTime) or now_s,
        "initContainerStatuses": init_statuses or None,
        "containerStatuses": main_statuses,
        "reason": remote.reason,
        "message": remote.message,
    }
    return status


def _comparable(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: status.get(k) for k in _COMPARED}


_COMPARED = (
    "phase", "conditions", "hostIP", "hostIPs", "podIP", "podIPs", "startTime",
    "initContainerStatuses", "containerStatuses", "reason", "message",
)


def _normalise(value: Any) -> Any:
    # The API server drops empty objects/lists and nulls in what it returns; compare likewise.
    if isinstance(value, Mapping):
        out = {k: _normalise(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def status_patch(pod: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch for `pods/<name>/status` that turns the API's status into `desired`, with the
    pod's uid as a precondition; None when nothing would change."""
    current = pod.get("status") or {}
    if _normalise(_comparable(current)) == _normalise(_comparable(desired)):
        return None
    return {"metadata": {"uid": (pod.get("metadata") or {}).get("uid")}, "status": dict(desired)}


def waiting_status(
    pod: Mapping[str, Any], *, reason: str, message: str, host_ips: Sequence[str], now: datetime | None = None
) -> dict[str, Any]:
    """The status of a pod that cannot start yet (e.g. CreateContainerConfigError: a Secret is
    missing): Pending, every container waiting with `reason`/`message`."""
    spec = pod.get("spec") or {}
    names = [c["name"] for c in spec.get("containers") or []]
    remote = wire.PodStatus(
        namespace=(pod.get("metadata") or {}).get("namespace", "default"),
        name=(pod.get("metadata") or {}).get("name", ""),
        uid=(pod.get("metadata") or {}).get("uid", ""),
        phase="Pending",
        containerStatuses=[
            wire.ContainerStatus(
                name=n, state=wire.ContainerState(waiting=wire.ContainerStateWaiting(
                    reason=reason, message=None if reason == "ContainerCreating" else message))
            )
            for n in names
        ],
    )
    return desired_status(pod, remote, host_ips=host_ips, now=now)


def failed_status(
    pod: Mapping[str, Any], *, reason: str, message: str, host_ips: Sequence[str], now: datetime | None = None
) -> dict[str, Any]:
    """The status of a pod that will never run here (refused by the desktop policy, invalid)."""
    meta = pod.get("metadata") or {}
    remote = wire.PodStatus(
        namespace=meta.get("namespace", "default"), name=meta.get("name", ""), uid=meta.get("uid", ""),
        phase="Failed", reason=reason, message=message,
    )
    return desired_status(pod, remote, host_ips=host_ips, now=now)
