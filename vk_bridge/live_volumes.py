"""Live volumes: a running pod's Secret, ConfigMap, downwardAPI and projected files follow their
sources, as on a kubelet (configMapAndSecretChangeDetectionStrategy: Watch).

    live = LiveVolumes(kube, provider, resolver, tokens, running=controller_view, settings=...)
    await live.run()                     # forever: one task of vk_bridge/main.py

One loop with one job: every `resync_seconds`, and at once when a watched object changes, each
running pod's content volumes are resolved again (`Resolver.volume_contents`) and the volumes
whose contents differ from what was last sent go to the provider (`update_volumes`), which
swaps their files atomically. What is resolved comes from memory:

- ConfigMaps and Secrets from one watch per object the running pods reference (a list and watch
  with `fieldSelector=metadata.name=<name>`, which the Node authorizer allows a node for the
  objects of its pods, as it allows the kubelet), started when a pod first references the object
  and stopped when none does any more; until a watch has listed, the object is read with a GET;
- projected service-account tokens from the token manager (vk_bridge/token_manager.py), which
  requests a new one when 80 % of its lifetime has passed (or 24 h);
- downward API values from the pod objects the pod controller watches anyway.

As the kubelet: a missing non-optional source keeps the files the pod has (and says why in the
log, once); an optional source that goes away empties its files; subPath mounts keep what they
got at their start (the sidecar does that). A provider that cannot update volumes (the Slurm
sidecar, a Docker sidecar without host access) answers InvalidInput: the pod's contents are not
sent again until they change.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kod import errors, wire
from kod.kube import KubeClient
from kod.kube_watch import list_and_watch
from kod.log import get_logger, pod_context
from vk_bridge.provider import VolumeUpdates
from vk_bridge.resolve import References, Resolver, UnresolvedReference
from vk_bridge.token_manager import TokenManager

log = get_logger(__name__)

#: (resource, namespace, name) of a ConfigMap or Secret: resource is "configmaps" or "secrets".
Ref = tuple[str, str, str]
#: The pods that run now, by uid (read-only Pod objects): the pod controller's view.
Running = Callable[[], Mapping[str, Mapping[str, Any]]]
#: The pods vk_bridge knows at all (running or starting), by uid: their tokens are kept.
Known = Callable[[], Iterable[str]]

#: How often the loop looks (in memory) for pods that started running since the last round.
NEW_POD_CHECK_SECONDS = 0.5

_CONTENT_KINDS = ("secret", "configMap", "downwardAPI", "projected")


def references(pod: Mapping[str, Any]) -> set[Ref]:
    """The ConfigMaps and Secrets `pod`'s volumes read."""
    ns = (pod.get("metadata") or {}).get("namespace") or "default"
    out: set[Ref] = set()
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        sources: list[Mapping[str, Any]] = [vol]
        if vol.get("projected") is not None:
            sources = list(vol["projected"].get("sources") or [])
        for src in sources:
            if src.get("secret") is not None:
                name = src["secret"].get("secretName") or src["secret"].get("name")
                if name:
                    out.add(("secrets", ns, name))
            if src.get("configMap") is not None and src["configMap"].get("name"):
                out.add(("configmaps", ns, src["configMap"]["name"]))
    return out


def running_pods(
    pods: Mapping[str, Mapping[str, Any]], remote: Mapping[str, wire.PodStatus]
) -> dict[str, Mapping[str, Any]]:
    """The pods that run in the provider now (not finished, not being deleted), by uid, from the
    pod controller's two views (`pods`: the API's, `remote`: InterLink's)."""
    out = {}
    for uid, pod in pods.items():
        status = remote.get(uid)
        if status is None or status.phase in ("Succeeded", "Failed"):
            continue
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        out[uid] = pod
    return out


def has_contents(pod: Mapping[str, Any]) -> bool:
    return any(any(vol.get(k) is not None for k in _CONTENT_KINDS) for vol in (pod.get("spec") or {}).get("volumes") or [])


def _digest(volume: wire.ResolvedVolume) -> str:
    return hashlib.sha256(volume.model_dump_json().encode()).hexdigest()


class _Watched:
    """`References` for a refresh: ConfigMaps and Secrets from the watches, the rest as before."""

    def __init__(self, live: LiveVolumes, base: References) -> None:
        self._live = live
        self._base = base

    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        ref = ("secrets", namespace, name)
        return self._live.objects[ref] if ref in self._live.synced else await self._base.secret(namespace, name)

    async def config_map(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        ref = ("configmaps", namespace, name)
        return self._live.objects[ref] if ref in self._live.synced else await self._base.config_map(namespace, name)

    async def service_account_token(self, namespace: str, service_account: str, **kw: Any) -> str:
        return await self._base.service_account_token(namespace, service_account, **kw)

    async def services(self, namespace: str) -> Sequence[Mapping[str, Any]]:
        return await self._base.services(namespace)

    async def persistent_volume_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await self._base.persistent_volume_claim(namespace, name)


class LiveVolumes:
    """Keeps running pods' content volumes current (see the module docstring)."""

    def __init__(
        self,
        kube: KubeClient,
        provider: VolumeUpdates,
        resolver: Resolver,
        base: References,
        tokens: TokenManager,
        *,
        running: Running,
        known: Known,
        resync_seconds: float = 10.0,
        watch_timeout_seconds: int = 300,
    ) -> None:
        self.kube = kube
        self.provider = provider
        self.resolver = resolver
        self.tokens = tokens
        self.running = running
        self.known = known
        self.resync_seconds = resync_seconds
        self.watch_timeout_seconds = watch_timeout_seconds
        self.refs = _Watched(self, base)
        #: The watched objects (None: it does not exist), and the refs whose watch has listed.
        self.objects: dict[Ref, Mapping[str, Any] | None] = {}
        self.synced: set[Ref] = set()
        self._watches: dict[Ref, asyncio.Task[None]] = {}
        #: Pod uid -> volume name -> digest of the contents last sent (or refused for good).
        self.sent: dict[str, dict[str, str]] = {}
        self._said: dict[str, str] = {}
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Resync every `resync_seconds`, and when a watched object changes; forever."""
        try:
            while True:
                self._wake.clear()
                await self.resync()
                await self._until_due()
        finally:
            for task in self._watches.values():
                task.cancel()
            await asyncio.gather(*self._watches.values(), return_exceptions=True)

    async def _until_due(self) -> None:
        """Wait for the next round: a watched object changed, a pod with contents started running
        (its objects are watched from then on, so a change right after its start is not left for
        the periodic resync), or `resync_seconds` passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resync_seconds
        while (left := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._wake.wait(), min(left, NEW_POD_CHECK_SECONDS))
                return
            except TimeoutError:
                pass
            if any(uid not in self.sent for uid, p in self.running().items() if has_contents(p)):
                return

    async def resync(self) -> None:
        """One round: watches follow the running pods' references, changed contents are sent."""
        pods = {uid: p for uid, p in self.running().items() if has_contents(p)}
        self._follow(set().union(*(references(p) for p in pods.values())) if pods else set())
        for uid in set(self.sent) - set(pods):
            self.sent.pop(uid, None)
            self._said.pop(uid, None)
        known = set(self.known())
        for uid in self.tokens.pods() - known:
            self.tokens.forget(uid)
        for uid, pod in pods.items():
            await self._refresh(uid, pod)

    # -- watches -------------------------------------------------------------------------------

    def _follow(self, wanted: set[Ref]) -> None:
        for ref in set(self._watches) - wanted:
            self._watches.pop(ref).cancel()
            self.objects.pop(ref, None)
            self.synced.discard(ref)
        for ref in wanted - set(self._watches):
            self._watches[ref] = asyncio.create_task(self._watch(ref), name=f"live-volume-{ref[0]}-{ref[1]}-{ref[2]}")

    async def _watch(self, ref: Ref) -> None:
        resource, ns, name = ref
        async for event in list_and_watch(
            self.kube, f"/api/v1/namespaces/{ns}/{resource}", params={"fieldSelector": f"metadata.name={name}"},
            timeout_seconds=self.watch_timeout_seconds,
        ):
            if event.type == "SYNC":
                found = [o for o in event.objects if (o.get("metadata") or {}).get("name") == name]
                new = found[0] if found else None
            else:
                new = None if event.type == "DELETED" else event.object
            old = self.objects.get(ref)
            self.objects[ref] = new
            first = ref not in self.synced
            self.synced.add(ref)
            if not first and _rv(old) != _rv(new):
                self._wake.set()

    # -- one pod -------------------------------------------------------------------------------

    async def _refresh(self, uid: str, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        ns, name = meta.get("namespace") or "default", meta.get("name") or ""
        bound = log.bind(**pod_context(ns, name, uid))
        # Seen from now on (even when it cannot be resolved): `_until_due` wakes for new pods only.
        sent = self.sent.setdefault(uid, {})
        try:
            contents = await self.resolver.volume_contents(pod, self.refs)
        except UnresolvedReference as exc:
            # As the kubelet: the files stay as they are while a source is missing.
            self._say(bound, uid, "a volume source is missing: the pod keeps its files", exc.message)
            return
        except errors.KodError as exc:
            self._say(bound, uid, "the pod's volumes cannot be resolved now", str(exc))
            return
        changed = [v for v in contents if sent.get(v.name) != _digest(v)]
        if not changed:
            return
        try:
            result = await self.provider.update_volumes(ns, name, wire.VolumeUpdate(uid=uid, volumes=changed))
        except errors.InvalidInput as exc:
            # Retrying cannot help: not again until the contents change.
            self._say(bound, uid, "the runtime does not update this pod's volumes", exc.message)
        except (errors.NotFound, errors.Unavailable) as exc:
            bound.debug("volume update not possible now, will retry", error=str(exc))
            return
        else:
            self._said.pop(uid, None)
            if result.updated:
                bound.info("pod volumes updated", volumes=result.updated)
        for v in changed:
            sent[v.name] = _digest(v)

    def _say(self, bound: Any, uid: str, what: str, why: str) -> None:
        if self._said.get(uid) != why:
            self._said[uid] = why
            bound.warning(what, reason=why)


def _rv(obj: Mapping[str, Any] | None) -> str | None:
    return None if obj is None else (obj.get("metadata") or {}).get("resourceVersion")
