"""Follows a session's pods (the app's, and the viewer's in pod mode) through one watch, and turns
what it sees into events the session waits on: running, finished, failed.

A pod that cannot start says so in its status long before any timeout (an image that is not
there, a Secret that is missing, a pod the desktop's policy refuses): those end the wait at
once with the pod's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from kod import errors, labels
from kod.kube import KubeClient
from kod.kube_watch import watch_changes

from cloudify import names as n

#: Container waiting reasons that will not fix themselves.
FATAL_WAITING = frozenset({
    "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "CrashLoopBackOff", "RunContainerError", "PreCreateHookError", "PostStartHookError",
})
TERMINAL = ("Succeeded", "Failed")
#: What to look at first when a pod of this role does not start.
HINTS = {
    n.ROLE_VIEWER: "is the desktop stack running and its node Ready (`python -m localenv status`)? ",
    n.ROLE_APP: "is a node free to run it (`kubectl get nodes`)? ",
}


@dataclass
class PodState:
    """What is known of one of the session's pods."""

    role: str
    pod: dict[str, Any] | None = None
    gone: bool = False
    running: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    failure: errors.KodError | None = None
    failed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str | None:
        return self.pod["metadata"]["name"] if self.pod else None

    @property
    def phase(self) -> str | None:
        return self.pod.get("status", {}).get("phase") if self.pod else None

    @property
    def node(self) -> str | None:
        return self.pod.get("spec", {}).get("nodeName") if self.pod else None

    @property
    def pod_ip(self) -> str | None:
        return self.pod.get("status", {}).get("podIP") if self.pod else None

    def exit_code(self) -> int | None:
        """The first container's exit code once it terminated."""
        for cs in (self.pod or {}).get("status", {}).get("containerStatuses", []):
            term = cs.get("state", {}).get("terminated")
            if term is not None:
                return int(term.get("exitCode", 1))
        return None

    def describe(self) -> str:
        """Why the pod is where it is, in a line: phase, conditions, container states."""
        if self.pod is None:
            return "the pod does not exist yet (the Job controller has not made it)"
        status = self.pod.get("status", {})
        parts = [f"phase {status.get('phase', '?')}" + (f" on node {self.node}" if self.node else "")]
        if status.get("reason") or status.get("message"):
            parts.append(f"{status.get('reason', '')}: {status.get('message', '')}".strip(": "))
        for cond in status.get("conditions", []):
            if cond.get("status") != "True" and cond.get("message"):
                parts.append(f"{cond.get('type')}: {cond.get('message')}")
        for cs in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
            waiting = cs.get("state", {}).get("waiting")
            if waiting and waiting.get("reason"):
                parts.append(f"container {cs.get('name')}: {waiting.get('reason')} {waiting.get('message', '')}".strip())
        return "; ".join(parts)


def _fatal(state: PodState) -> errors.KodError | None:
    status = (state.pod or {}).get("status", {})
    for cs in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
        waiting = cs.get("state", {}).get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            what = f"the {state.role} pod cannot start: {waiting.get('reason')}"
            message = (waiting.get("message") or "").strip()
            hint = None
            if "Image" in waiting["reason"]:
                hint = f"is the image {cs.get('image')} on the node? (`python -m localenv images` builds and imports it)"
            return errors.Unavailable(f"{what}: {message}" if message else what, hint=hint)
    if status.get("phase") == "Failed" and not state.running.is_set():
        reason = status.get("reason") or "Failed"
        return errors.Unavailable(f"the {state.role} pod failed to start: {reason}: {status.get('message', '')}".rstrip(": "))
    return None


class SessionPods:
    """One watch over the pods labelled with the session id; `app` and `viewer` are their states.
    Start with `start()`, stop with `close()`."""

    def __init__(self, kube: KubeClient, namespace: str, session: str) -> None:
        self.kube, self.namespace, self.session = kube, namespace, session
        self.app = PodState(n.ROLE_APP)
        self.viewer = PodState(n.ROLE_VIEWER)
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch-{self.session}")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        try:
            await self._follow()
        except errors.KodError as exc:
            # The watch was refused (permissions): whoever waits learns it now, not at a timeout.
            for state in (self.app, self.viewer):
                if state.failure is None:
                    state.failure = errors.Unavailable(f"cannot watch the session's pods: {exc}", hint=exc.hint)
                    state.failed.set()

    async def _follow(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        # A refusal (403: the user may not watch pods) is raised, not retried: the session ends
        # with it at once; an API server that blinks is waited out.
        changes = watch_changes(self.kube, path, params={"labelSelector": f"{labels.SESSION}={self.session}"}, retry_refusals=False)
        async for event in changes:
            pod = dict(event.object or {})
            role = pod["metadata"].get("labels", {}).get(labels.ROLE)
            state = self.app if role == n.ROLE_APP else self.viewer if role == n.ROLE_VIEWER else None
            if state is None:
                continue
            self._update(state, event.type, pod)
            self.changed.set()

    @staticmethod
    def _update(state: PodState, kind: str, pod: dict[str, Any]) -> None:
        state.pod = pod
        phase = pod.get("status", {}).get("phase")
        if phase in ("Running", *TERMINAL) and _started(pod):
            state.running.set()
        if kind == "DELETED":
            state.gone = True
            state.finished.set()
        if phase in TERMINAL:
            state.finished.set()
        if state.failure is None:
            failure = _fatal(state)
            if failure is not None:
                state.failure = failure
                state.failed.set()


def _started(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    return bool(statuses) and all(
        cs.get("state", {}).get("running") is not None or cs.get("state", {}).get("terminated") is not None
        for cs in statuses
    )


async def wait_for(state: PodState, event: asyncio.Event, *, timeout: float, what: str) -> None:
    """Wait for `event` of `state`; raise the pod's own failure at once, or Unavailable naming
    what the pod is stuck on when `timeout` passes."""
    ev_task = asyncio.create_task(event.wait())
    fail_task = asyncio.create_task(state.failed.wait())
    try:
        done, _ = await asyncio.wait({ev_task, fail_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ev_task.cancel()
        fail_task.cancel()
    if state.failure is not None:
        raise state.failure
    if not event.is_set():
        hint = HINTS.get(state.role, "")
        raise errors.Unavailable(
            f"waited {timeout:g} s for {what}: {state.describe()}",
            hint=f"{hint}raise the timeout with -t, or see `kubectl describe pod {state.name or ''}` in the session's namespace",
        )
