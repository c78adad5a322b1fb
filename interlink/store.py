"""The latest status of every pod, per sidecar, fed by the sidecars' watch streams.

This is what lets interlink route a call for `namespace/name` to the sidecar that holds the pod,
answer list and watch without asking anyone, and survive its own restart: the store is rebuilt
from each sidecar's SYNC, which replaces everything known about that sidecar (a pod missing from
it is reported DELETED). Every change is published once to the hub; an unchanged status is not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from kod.hub import Hub
from kod.log import get_logger, pod_context
from kod.wire import PodStatus, WatchEvent


log = get_logger(__name__)

Key = tuple[str, str]  # (namespace, name)


def _key(pod: PodStatus) -> Key:
    return (pod.namespace, pod.name)


class PodStore:
    """Pods by sidecar. All methods are synchronous: callers on the event loop never interleave."""

    def __init__(self, sidecars: Iterable[str], hub: Hub) -> None:
        self._pods: dict[str, dict[Key, PodStatus]] = {name: {} for name in sidecars}
        self._hub = hub
        self._synced: set[str] = set()
        #: Set once every sidecar has sent at least one SYNC since interlink started.
        self.all_synced = asyncio.Event()

    # --- fed by the sidecars' watch streams ---

    def apply(self, sidecar: str, event: WatchEvent) -> None:
        """One event of a sidecar's status stream (`kod.watch_follow` delivers them)."""
        if event.type == "SYNC":
            self.apply_sync(sidecar, event.pods or [])
        elif event.type == "STATUS" and event.pod is not None:
            self.apply_status(sidecar, event.pod)
        elif event.type == "DELETED" and event.pod is not None:
            self.apply_deleted(sidecar, event.pod)

    def apply_sync(self, sidecar: str, pods: Iterable[PodStatus]) -> None:
        """A sidecar's complete state: publish what changed, and DELETED for what is gone."""
        old = self._pods[sidecar]
        new: dict[Key, PodStatus] = {}
        for pod in pods:
            pod = _stamped(pod, sidecar)
            new[_key(pod)] = pod
        self._pods[sidecar] = new
        for key, pod in new.items():
            if old.get(key) != pod:
                self._hub.publish(WatchEvent(type="STATUS", pod=pod))
        for key, pod in old.items():
            if key not in new:
                log.info("pod gone after resync", sidecar=sidecar, **pod_context(pod.namespace, pod.name, pod.uid))
                self._hub.publish(WatchEvent(type="DELETED", pod=pod))
        if sidecar not in self._synced:
            self._synced.add(sidecar)
            if self._synced >= set(self._pods):
                self.all_synced.set()

    def apply_status(self, sidecar: str, pod: PodStatus) -> None:
        """A changed pod, from the stream. The stream is ordered, but a call's answer (see
        `record`) may have brought a newer version of the same pod before it; keep that one."""
        pod = _stamped(pod, sidecar)
        pods = self._pods[sidecar]
        known = pods.get(_key(pod))
        if known == pod or (known is not None and known.uid == pod.uid and known.version > pod.version):
            return
        pods[_key(pod)] = pod
        self._hub.publish(WatchEvent(type="STATUS", pod=pod))

    def apply_deleted(self, sidecar: str, pod: PodStatus) -> None:
        """A pod the sidecar no longer has."""
        pod = _stamped(pod, sidecar)
        known = self._pods[sidecar].get(_key(pod))
        if known is None or known.uid != pod.uid:
            return
        del self._pods[sidecar][_key(pod)]
        self._hub.publish(WatchEvent(type="DELETED", pod=pod))

    # --- fed by answers to calls (create, get) ---

    def record(self, sidecar: str, pod: PodStatus) -> None:
        """A status from a call's answer. It may be older than what the stream already brought,
        so it only fills a gap (or replaces an older incarnation or version)."""
        pod = _stamped(pod, sidecar)
        known = self._pods[sidecar].get(_key(pod))
        if known is not None and known.uid == pod.uid and known.version >= pod.version:
            return
        self._pods[sidecar][_key(pod)] = pod
        self._hub.publish(WatchEvent(type="STATUS", pod=pod))

    # --- queries ---

    def locate(self, namespace: str, name: str, uid: str | None = None) -> str | None:
        """The sidecar that holds the pod (with this uid, when given), or None."""
        for sidecar, pods in self._pods.items():
            pod = pods.get((namespace, name))
            if pod is not None and (uid is None or pod.uid == uid):
                return sidecar
        return None

    def snapshot(self) -> list[PodStatus]:
        """Every pod, sorted by namespace and name (stable output for clients and tests)."""
        pods = [pod for per_sidecar in self._pods.values() for pod in per_sidecar.values()]
        return sorted(pods, key=lambda p: (p.namespace, p.name, p.sidecar or ""))

    def count(self, sidecar: str) -> int:
        return len(self._pods[sidecar])

    def synced(self, sidecar: str) -> bool:
        return sidecar in self._synced


def _stamped(pod: PodStatus, sidecar: str) -> PodStatus:
    return pod if pod.sidecar == sidecar else pod.model_copy(update={"sidecar": sidecar})
