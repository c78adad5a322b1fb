"""Kubernetes Events about pods (what `kubectl describe pod` shows), sent in the background.

    recorder.record(pod, type_="Warning", reason="Forbidden", message="...")   # one Event
    recorder.record_reported(pod, event)      # one the sidecar reported (wire.PodEvent), counted

Events the sidecar reports in a pod's status (probes, hooks: `wire.PodStatus.events`) repeat:
the same (type, reason, message) counts up, as the kubelet's event correlator aggregates them.
Each such series is one Event whose name is derived from the pod's uid and the series, created
the first time and patched (count, lastTimestamp) after: recording it again, also by a restarted
virtual kubelet that no longer knows what it sent, changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from kod import errors, wire
from kod.kube import KubeClient
from kod.log import get_logger
from vk_bridge.status import k8s_time

log = get_logger(__name__)

COMPONENT = "kod-vk"


def event_object(
    pod: Mapping[str, Any], *, type_: Literal["Normal", "Warning"], reason: str, message: str, node: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A core/v1 Event about `pod`, as the kubelet reports them."""
    meta = pod.get("metadata") or {}
    ts = k8s_time(now or datetime.now(UTC))
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.get('name', 'pod')}.{uuid.uuid4().hex[:16]}", "namespace": meta.get("namespace", "default")},
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "name": meta.get("name"), "namespace": meta.get("namespace"),
            "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT,
        "reportingInstance": node,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    }


class EventRecorder:
    """Posts Events without making the caller wait; failures are logged, never raised."""

    def __init__(self, kube: KubeClient, node: str) -> None:
        self.kube = kube
        self.node = node
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, pod: Mapping[str, Any], *, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        """Send one Event in the background."""
        body = event_object(pod, type_=type_, reason=reason, message=message, node=self.node)
        task = asyncio.get_running_loop().create_task(self._send(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def record_reported(self, pod: Mapping[str, Any], event: wire.PodEvent) -> None:
        """Send (create, or update the count of) the Event of a series the sidecar reported."""
        meta = pod.get("metadata") or {}
        digest = hashlib.sha256(
            "\0".join((str(meta.get("uid")), event.type, event.reason, event.message)).encode()
        ).hexdigest()[:16]
        body = event_object(pod, type_=event.type, reason=event.reason, message=event.message, node=self.node)
        body["metadata"]["name"] = f"{meta.get('name', 'pod')}.{digest}"
        body["firstTimestamp"] = k8s_time(event.firstTimestamp)
        body["lastTimestamp"] = k8s_time(event.lastTimestamp)
        body["count"] = event.count
        task = asyncio.get_running_loop().create_task(self._send_series(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_series(self, body: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{body['metadata']['namespace']}/events"
        try:
            try:
                await self.kube.create(path, body)
            except errors.Conflict:
                patch = {"count": body["count"], "lastTimestamp": body["lastTimestamp"]}
                await self.kube.patch(f"{path}/{body['metadata']['name']}", patch)
        except errors.KodError as exc:
            log.warning("could not record event", reason=body["reason"], error=str(exc))

    async def _send(self, body: dict[str, Any]) -> None:
        try:
            await self.kube.create(f"/api/v1/namespaces/{body['metadata']['namespace']}/events", body)
        except errors.KodError as exc:
            log.warning("could not record event", reason=body["reason"], error=str(exc))

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a little) for events still in flight; used at shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
