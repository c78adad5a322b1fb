"""Kubernetes Events about pods (what `kubectl describe pod` shows), sent in the background."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from kod import errors
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

    async def _send(self, body: dict[str, Any]) -> None:
        try:
            await self.kube.create(f"/api/v1/namespaces/{body['metadata']['namespace']}/events", body)
        except errors.KodError as exc:
            log.warning("could not record event", reason=body["reason"], error=str(exc))

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a little) for events still in flight; used at shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
