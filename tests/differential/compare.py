"""What a user sees of a pod, normalised so that two nodes can be compared, and the diff.

A view is a flat mapping `path -> text`, for example:

    phase                        Failed
    reason                       DeadlineExceeded
    condition.Ready              False:PodFailed
    container.main.state         terminated:Error:137
    container.main.lastState     none
    container.main.restarts      0
    container.main.ready         False
    container.main.message       all done
    init.init-1.state            terminated:Completed:0
    logs.main                    first line\nsecond line
    event.Started                yes

Left out, because they differ on any two nodes or runs: names of nodes and namespaces, uids,
IPs, container ids, images' ids, times; in messages and logs, the pod's namespace and uid read
`<namespace>` and `<uid>`. Restart counts are bucketed (`0` / `>=1`). A container
that restarted at least once is caught mid-cycle at a moment that depends on timing (running,
waiting in CrashLoopBackOff, or just terminated), so its state reads `cycling` and its `ready`
`~`, and when some container cycles so do the pod's Ready and ContainersReady conditions; its
`lastState` reads how its last run ended (lastState, or its state when it just ended and the
kubelet has not moved it to lastState yet), which stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

View = dict[str, str]

#: How many log lines of each container are compared.
LOG_LINES = 5
#: The text of a container whose logs could not be read (not started yet, for example).
NO_LOGS = "<unavailable>"
#: Containers caught mid-restart.
CYCLING = "cycling"
#: Values that depend on when a cycling pod is looked at.
TIMING = "~"
#: Conditions that follow a cycling container.
READINESS_CONDITIONS = ("Ready", "ContainersReady")


@dataclass(frozen=True)
class Difference:
    """One path whose value differs between the two views (None: the path is absent)."""

    path: str
    real: str | None
    virtual: str | None

    def __str__(self) -> str:
        return f"{self.path}: real={_show(self.real)} virtual={_show(self.virtual)}"


def _show(value: str | None) -> str:
    return "<absent>" if value is None else repr(value)


def state_text(state: Mapping[str, Any] | None) -> str:
    """`running`, `waiting:<reason>`, `terminated:<reason>:<exit code>`, or `none`."""
    state = state or {}
    if "terminated" in state:
        t = state["terminated"] or {}
        return f"terminated:{t.get('reason', '')}:{t.get('exitCode')}"
    if "waiting" in state:
        return f"waiting:{(state['waiting'] or {}).get('reason', '')}"
    if "running" in state:
        return "running"
    return "none"


def restart_bucket(count: int) -> str:
    """Restart counts as timing allows to compare them."""
    return "0" if count == 0 else ">=1"


def first_lines(text: str | None, lines: int = LOG_LINES) -> str:
    """The first `lines` lines of a log (NO_LOGS when there is none to read)."""
    if text is None:
        return NO_LOGS
    return "\n".join(text.splitlines()[:lines])


def scrub(text: str, pod: Mapping[str, Any]) -> str:
    """`text` without the pod's namespace and uid (which differ between the two nodes' pods)."""
    meta = pod.get("metadata") or {}
    for value, placeholder in ((meta.get("uid"), "<uid>"), (meta.get("namespace"), "<namespace>")):
        if value:
            text = text.replace(str(value), placeholder)
    return text


def _container_view(prefix: str, status: Mapping[str, Any]) -> tuple[View, bool]:
    restarts = int(status.get("restartCount") or 0)
    cycling = restarts >= 1
    state = status.get("state") or {}
    last = status.get("lastState") or {}
    if cycling and "terminated" not in last and "terminated" in state:
        last = state
    out: View = {
        f"{prefix}.state": CYCLING if cycling else state_text(state),
        f"{prefix}.lastState": state_text(last),
        f"{prefix}.restarts": restart_bucket(restarts),
        f"{prefix}.ready": TIMING if cycling else str(bool(status.get("ready"))),
    }
    # The termination message of the run that ended: the current one, or the last one when the
    # container cycles (its current state is timing).
    ended = last if cycling else state
    message = (ended.get("terminated") or {}).get("message")
    if message:
        out[f"{prefix}.message"] = message
    waiting_message = (state.get("waiting") or {}).get("message")
    if waiting_message and not cycling:
        out[f"{prefix}.waitingMessage"] = waiting_message
    return out, cycling


def view(pod: Mapping[str, Any], logs: Mapping[str, str | None] | None = None,
         events: Iterable[str] = ()) -> View:
    """The normalised view of `pod` (its JSON as the API returns it), with each container's logs
    (None: not readable) and the reasons of the pod's events."""
    status = pod.get("status") or {}
    out: View = {"phase": str(status.get("phase"))}
    for key in ("reason", "message"):
        if status.get(key):
            out[key] = str(status[key])
    any_cycling = False
    for kind, field in (("container", "containerStatuses"), ("init", "initContainerStatuses")):
        for st in status.get(field) or []:
            part, cycling = _container_view(f"{kind}.{st['name']}", st)
            out.update(part)
            any_cycling = any_cycling or cycling
    for cond in status.get("conditions") or []:
        if any_cycling and cond["type"] in READINESS_CONDITIONS:
            text = TIMING
        else:
            text = str(cond.get("status")) + (f":{cond['reason']}" if cond.get("reason") else "")
        out[f"condition.{cond['type']}"] = text
    for name, text in (logs or {}).items():
        out[f"logs.{name}"] = first_lines(text)
    for path in [p for p in out if p.endswith(("message", "Message")) or p.startswith("logs.")]:
        out[path] = scrub(out[path], pod)
    for reason in events:
        out[f"event.{reason}"] = "yes"
    return out


def diff(real: Mapping[str, str], virtual: Mapping[str, str]) -> list[Difference]:
    """Every path whose value differs, in path order."""
    return [Difference(path, real.get(path), virtual.get(path))
            for path in sorted(set(real) | set(virtual)) if real.get(path) != virtual.get(path)]
