"""The node's heartbeat: a Lease in `kube-node-lease`, renewed every few seconds.

The node lifecycle controller marks a node NotReady when its Lease has not been renewed for
`--node-monitor-grace-period`; renewing every `renew_seconds` (10 s, like the kubelet) keeps the
node Ready while this process lives, and lets it turn NotReady soon after it dies.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from kod import errors
from kod.kube import KubeClient
from kod.log import get_logger

log = get_logger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
#: Retry delays after a failed renewal (the kubelet's are similar: fast first, then slower).
RETRY_DELAYS = (0.2, 0.4, 0.8, 1.6, 3.2, 7.0)


def micro_time(now: datetime | None = None) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_object(node_name: str, node_uid: str | None, duration_seconds: int, now: datetime | None = None) -> dict[str, Any]:
    """The Lease the kubelet keeps for its node, owned by the Node (so it goes with it)."""
    meta: dict[str, Any] = {"name": node_name, "namespace": LEASE_NAMESPACE}
    if node_uid:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": node_name,
            "leaseDurationSeconds": duration_seconds,
            "renewTime": micro_time(now),
        },
    }


class LeaseRenewer:
    """One job: keep the node's Lease fresh. `ready` is set after the first renewal."""

    def __init__(self, kube: KubeClient, node_name: str, *, duration_seconds: int, renew_seconds: float) -> None:
        self.kube = kube
        self.node_name = node_name
        self.duration = duration_seconds
        self.interval = renew_seconds
        self.node_uid: str | None = None
        self.ready = asyncio.Event()
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{node_name}"

    async def renew(self) -> None:
        """Renew (or create) the Lease once."""
        patch = {"spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": self.duration, "renewTime": micro_time()}}
        try:
            await self.kube.patch(self.path, patch)
        except errors.NotFound:
            body = lease_object(self.node_name, self.node_uid, self.duration)
            try:
                await self.kube.create(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", body)
            except errors.Conflict:
                await self.kube.patch(self.path, patch)

    async def run(self) -> None:
        """Renew forever; a failed renewal is retried quickly, then at the usual pace."""
        failures = 0
        while True:
            try:
                await self.renew()
                if failures:
                    log.info("lease renewed again", node=self.node_name, after_failures=failures)
                failures = 0
                self.ready.set()
                await asyncio.sleep(self.interval)
            except errors.KodError as exc:
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                log.warning("lease renewal failed", node=self.node_name, attempt=failures, delay=delay, error=str(exc))
                await asyncio.sleep(delay)
