"""The pod table: every pod this sidecar runs, by uid and by namespace/name.

Contracts: a uid is in the table from the moment its create is accepted (before any Docker
object exists, so the event stream and a resync recognise its objects) until its delete has
removed its objects (or its create rolled back). `is_current(pod)` tells a worker or timer
holding an old `PodState` that it was deleted meanwhile. Two incarnations of one name may be in
the table while the old one is being deleted; the name then refers to the newest.
"""

from __future__ import annotations

from collections.abc import Iterator

from kod import errors
from sidecars.docker.state import PodState


class PodTable:
    """Pods by uid, with an index by (namespace, name)."""

    def __init__(self) -> None:
        self._pods: dict[str, PodState] = {}
        self._by_name: dict[tuple[str, str], str] = {}

    def __len__(self) -> int:
        return len(self._pods)

    def __contains__(self, uid: object) -> bool:
        return uid in self._pods

    def __iter__(self) -> Iterator[PodState]:
        """The pods (a snapshot: the table may change while the caller awaits)."""
        return iter(list(self._pods.values()))

    def uids(self) -> set[str]:
        return set(self._pods)

    def get(self, uid: str) -> PodState | None:
        return self._pods.get(uid)

    def named(self, namespace: str, name: str) -> PodState | None:
        """The newest pod called `namespace/name`, or None."""
        return self._pods.get(self._by_name.get((namespace, name)) or "")

    def is_current(self, pod: PodState) -> bool:
        """`pod` is still the table's pod for its uid (not deleted or rolled back meanwhile)."""
        return self._pods.get(pod.uid) is pod

    def register(self, pod: PodState) -> None:
        self._pods[pod.uid] = pod
        self._by_name[(pod.namespace, pod.name)] = pod.uid

    def unregister(self, pod: PodState) -> None:
        self._pods.pop(pod.uid, None)
        if self._by_name.get((pod.namespace, pod.name)) == pod.uid:
            del self._by_name[(pod.namespace, pod.name)]
            # Another incarnation of the name may still be around (being deleted).
            for other in self._pods.values():
                if (other.namespace, other.name) == (pod.namespace, pod.name):
                    self._by_name[(pod.namespace, pod.name)] = other.uid

    def lookup(self, namespace: str, name: str, uid: str | None = None) -> PodState:
        """The pod named `namespace/name` (and with `uid`, when given), or NotFound."""
        if uid:
            pod = self._pods.get(uid)
            if pod is None or (pod.namespace, pod.name) != (namespace, name):
                raise errors.NotFound(f"pod {namespace}/{name} with uid {uid} is not on this node")
            return pod
        pod = self.named(namespace, name)
        if pod is None:
            raise errors.NotFound(f"pod {namespace}/{name} is not on this node")
        return pod
