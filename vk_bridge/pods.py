"""The pod sync loop: the pods bound to this node, in the API and in InterLink, made to agree.

Two streams feed one work queue of pod uids:

- the API's pods with `spec.nodeName=<node>` (`list_and_watch`): what should run;
- InterLink's pushed status (`StatusNotifier.watch`): what runs. Nothing polls per pod.

Workers reconcile one uid at a time (a uid is never worked on by two workers at once), level-
triggered, from the latest copy of both sides: start a pod InterLink does not have, write the
status InterLink reports back to `pods/status`, terminate a pod that is being deleted (InterLink
delete with the grace period, then the pod object with gracePeriodSeconds=0 and a uid
precondition), and delete from InterLink what has no pod object any more. Nothing destructive
happens before both sides have been listed once: on start that adopts running pods (create is
idempotent by uid, so a running pod is never started twice) and removes orphans.

Admission (vk_bridge/admission.py) decides first, where a pod is first seen: a pod it refuses
ends Failed with the reason and a Warning event, and nothing of it is created; running pods
adopted after a restart are checked again, oldest first, and a refused one is stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog

from kod import errors, wire
from kod.kube import KubeClient
from kod.kube_watch import WatchEvent, list_and_watch
from kod.log import get_logger, new_request_id, pod_context, request_id_var
from vk_bridge import status as st
from vk_bridge.admission import Admission, Decision, admitted_and_running
from vk_bridge.events import EventRecorder
from vk_bridge.provider import PodSync
from vk_bridge.resolve import Resolver, UnresolvedReference
from vk_bridge.settings import PodSettings

log = get_logger(__name__)

#: Grace period when the pod object is already gone (force-deleted): stop at once.
ORPHAN_GRACE_SECONDS = 0
#: The kubelet's event spam filter (client-go's EventSourceObjectSpamFilter): per pod, a burst
#: of this many Event writes, then one more every `EVENT_REFILL_SECONDS` (a probe failing every
#: second costs the API server 25 writes, then one each 5 minutes, with the count caught up).
EVENT_BURST = 25
EVENT_REFILL_SECONDS = 300.0


class WorkQueue:
    """client-go's work queue semantics: a key queued many times is processed once; a key that
    changes while being processed is processed again afterwards, never concurrently."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()

    def add(self, key: str) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    async def get(self) -> str:
        key = await self._queue.get()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.put_nowait(key)

    def __len__(self) -> int:
        return len(self._dirty)


def _uid(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def _newer_rv(a: str | None, b: str | None) -> bool:
    """True when resourceVersion `a` is newer than `b` (they are etcd revisions in practice)."""
    if not b:
        return True
    if not a:
        return False
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


class PodController:
    """Keeps the pods of one node running in the provider and their status in the API."""

    def __init__(
        self,
        kube: KubeClient,
        provider: PodSync,
        resolver: Resolver,
        events: EventRecorder,
        *,
        node_name: str,
        host_ips: tuple[str, ...],
        settings: PodSettings,
        admission: Admission,
        watch_timeout_seconds: int = 300,
    ) -> None:
        self.kube = kube
        self.provider = provider
        self.resolver = resolver
        self.events = events
        self.node_name = node_name
        self.host_ips = host_ips
        self.settings = settings
        self.admission = admission
        self.watch_timeout_seconds = watch_timeout_seconds
        #: The API's pods on this node, by uid (read-only copies).
        self.pods: dict[str, Mapping[str, Any]] = {}
        #: InterLink's pods, by uid.
        self.remote: dict[str, wire.PodStatus] = {}
        self.api_synced = asyncio.Event()
        self.remote_synced = asyncio.Event()
        self.remote_connected = asyncio.Event()
        #: Set once both sides were listed and every known pod was queued once.
        self.ready = asyncio.Event()
        self.queue = WorkQueue()
        self._terminating: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._reported: set[str] = set()
        #: Pod uid -> the message of the last unresolved-reference Warning recorded for it. Kept
        #: apart from the retry count: a first try that failed for another reason (an API call
        #: that timed out under load) must not silence the FailedMount a user looks for.
        self._unresolved: dict[str, str] = {}
        #: Pod uid -> (type, reason, message) -> the count of the sidecar's event last recorded.
        self._event_counts: dict[str, dict[tuple[str, str, str], int]] = {}
        #: Pod uid -> (tokens, loop time they were counted): the event spam filter's buckets.
        self._event_tokens: dict[str, tuple[float, float]] = {}
        #: Pods whose object this controller removed; their DELETED event may still be on its way.
        self._removed: set[str] = set()
        #: Pods admission let run here, and those it refused (with why).
        self._admitted: set[str] = set()
        self._refused: dict[str, Decision] = {}

    # -- inputs --------------------------------------------------------------------------------

    async def run_api_watch(self) -> None:
        """Follow the API's pods on this node, forever."""
        async for event in list_and_watch(
            self.kube,
            "/api/v1/pods",
            params={"fieldSelector": f"spec.nodeName={self.node_name}"},
            timeout_seconds=self.watch_timeout_seconds,
        ):
            self.on_api_event(event)

    def on_api_event(self, event: WatchEvent) -> None:
        if event.type == "SYNC":
            fresh = {_uid(p): p for p in event.objects}
            gone = set(self.pods) - set(fresh)
            self.pods = fresh
            self._removed &= set(fresh)
            for uid in set(fresh) | gone:
                self.queue.add(uid)
            if not self.api_synced.is_set():
                self.api_synced.set()
                self._maybe_ready()
            return
        pod = event.object or {}
        uid = _uid(pod)
        if not uid:
            return
        if event.type == "DELETED":
            self.pods.pop(uid, None)
            self._removed.discard(uid)
        else:
            old = self.pods.get(uid)
            old_rv = ((old or {}).get("metadata") or {}).get("resourceVersion")
            if _newer_rv((pod.get("metadata") or {}).get("resourceVersion"), old_rv):
                self.pods[uid] = pod
        self.queue.add(uid)

    def on_remote_event(self, event: wire.WatchEvent) -> None:
        """The provider's notify callback: only updates maps and enqueues (it must not block)."""
        if event.type == "SYNC":
            fresh = {p.uid: p for p in event.pods or []}
            for uid, old in self.remote.items():
                if uid in fresh and old.version > fresh[uid].version:
                    fresh[uid] = old
            # Every known pod, not only InterLink's: a pod whose start failed while InterLink was
            # away is retried now that it is back, not after its backoff.
            changed = set(fresh) | set(self.remote) | set(self.pods)
            self.remote = fresh
            for uid in changed:
                self.queue.add(uid)
            if not self.remote_synced.is_set():
                self.remote_synced.set()
                self._maybe_ready()
        elif event.type == "STATUS" and event.pod is not None:
            self._remember(event.pod)
            self.queue.add(event.pod.uid)
        elif event.type == "DELETED" and event.pod is not None:
            known = self.remote.get(event.pod.uid)
            if known is None or known.version <= event.pod.version:
                self.remote.pop(event.pod.uid, None)
            self.queue.add(event.pod.uid)

    def _remember(self, status: wire.PodStatus) -> None:
        old = self.remote.get(status.uid)
        if old is None or status.version >= old.version:
            self.remote[status.uid] = status

    def _maybe_ready(self) -> None:
        if self.api_synced.is_set() and self.remote_synced.is_set():
            self._admit_adopted()
            for uid in set(self.pods) | set(self.remote):
                self.queue.add(uid)
            self.ready.set()
            log.info("pods synced", api=len(self.pods), interlink=len(self.remote))

    # -- admission ----------------------------------------------------------------------------

    def _admit(self, pod: Mapping[str, Any]) -> Decision:
        """Admission's answer for one pod, next to the admitted pods that have not ended; an
        admitted pod counts from now on. Synchronous: two pods never race for the same room."""
        uid = _uid(pod)
        others = admitted_and_running(self.pods[u] for u in self._admitted if u != uid and u in self.pods)
        decision = self.admission.admit(pod, others)
        if decision.allowed:
            self._admitted.add(uid)
        else:
            self._refused[uid] = decision
        return decision

    def _admit_adopted(self) -> None:
        """After a restart, the pods that already run are admitted again, oldest first (as a
        kubelet re-admits its pods in creation order), before any new pod."""
        running = [p for uid, p in self.pods.items() if uid in self.remote
                   and (p.get("status") or {}).get("phase") not in st.TERMINAL_PHASES
                   and not (p.get("metadata") or {}).get("deletionTimestamp")]
        running.sort(key=lambda p: ((p.get("metadata") or {}).get("creationTimestamp") or "", _uid(p)))
        for pod in running:
            if _uid(pod) not in self._admitted:
                self._admit(pod)

    async def _refuse(self, pod: Mapping[str, Any], remote: wire.PodStatus | None, decision: Decision) -> None:
        """A pod admission refused: its containers stopped when it already runs (adopted after
        a restart), then Failed with the reason, and a Warning event."""
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if remote is None and status.get("phase") == "Failed" and status.get("reason") == decision.reason:
            return  # said already
        if remote is not None:
            grace = int((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            log.warning("stopping a pod admission refused", reason=decision.reason)
            await self.provider.delete_pod(meta["namespace"], meta["name"], _uid(pod), grace_period_seconds=grace)
            self.remote.pop(_uid(pod), None)
        await self._fail(pod, decision.reason, decision.message)

    async def run_remote_watch(self) -> None:
        await self.provider.watch(self.on_remote_event, connected=self.remote_connected)

    # -- workers -------------------------------------------------------------------------------

    async def run_workers(self) -> None:
        """Run `settings.workers` workers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for i in range(self.settings.workers):
                tg.create_task(self._worker(), name=f"pod-worker-{i}")

    async def _worker(self) -> None:
        while True:
            uid = await self.queue.get()
            try:
                await self.reconcile(uid)
            except asyncio.CancelledError:
                raise
            except errors.KodError as exc:
                self._retry_later(uid, exc)
            except Exception:
                log.exception("pod reconcile crashed", pod_uid=uid)
                self._retry_later(uid, None)
            finally:
                self.queue.done(uid)

    def _retry_later(self, uid: str, exc: BaseException | None) -> None:
        n = self._failures.get(uid, 0)
        self._failures[uid] = n + 1
        delays = self.settings.retry_backoff
        delay = delays[min(n, len(delays) - 1)]
        log.warning("pod sync failed, will retry", pod_uid=uid, attempt=n + 1, delay=delay, error=str(exc) if exc else None)
        self.queue.add_after(uid, delay)

    async def reconcile(self, uid: str) -> None:
        """Make InterLink and the API agree about one pod."""
        if not self.ready.is_set():
            return  # _maybe_ready queues everything once both sides are known
        pod = self.pods.get(uid)
        remote = self.remote.get(uid)
        if pod is None:
            if remote is not None:
                self._terminate(uid, remote.namespace, remote.name, None, ORPHAN_GRACE_SECONDS)
            self._failures.pop(uid, None)
            self._reported.discard(uid)
            self._unresolved.pop(uid, None)
            self._event_counts.pop(uid, None)
            self._event_tokens.pop(uid, None)
            self._admitted.discard(uid)
            self._refused.pop(uid, None)
            return
        meta = pod.get("metadata") or {}
        with structlog.contextvars.bound_contextvars(**pod_context(meta.get("namespace", ""), meta.get("name", ""), uid)):
            if uid in self._removed:
                return
            if meta.get("deletionTimestamp"):
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                self._terminate(uid, meta["namespace"], meta["name"], pod, int(grace))
                return
            if remote is None and (pod.get("status") or {}).get("phase") in st.TERMINAL_PHASES:
                return  # finished and gone from the runtime: nothing to run again
            # Where a pod is first seen (or adopted): admission decides before anything is made.
            refused = self._refused.get(uid)
            if refused is None and uid not in self._admitted:
                decision = self._admit(pod)
                refused = None if decision.allowed else decision
            if refused is not None:
                await self._refuse(pod, remote, refused)
                return
            if remote is None:
                await self._start(pod)
                return
            await self._write_status(pod, remote)
            self._failures.pop(uid, None)

    # -- starting -----------------------------------------------------------------------------

    async def _start(self, pod: Mapping[str, Any]) -> None:
        uid = _uid(pod)
        token = request_id_var.set(new_request_id())
        clock = asyncio.get_running_loop().time
        t0 = clock()
        try:
            try:
                request = await self.resolver.pod_create_request(pod)
            except UnresolvedReference as exc:
                # The event first: it is sent in the background, so a status patch that fails
                # (and is retried) does not lose it; once per distinct message, like the
                # kubelet's correlator folds repeats.
                if self._unresolved.get(uid) != exc.message:
                    self._unresolved[uid] = exc.message
                    self.events.record(pod, type_="Warning", reason=exc.event_reason, message=exc.message)
                await self._patch_status(pod, st.waiting_status(pod, reason=exc.reason, message=exc.message, host_ips=self.host_ips))
                raise
            except errors.InvalidInput as exc:
                await self._fail(pod, "InvalidPod", str(exc))
                return
            t1 = clock()
            try:
                log.info("starting pod")
                status = await self.provider.create_pod(request)
            except errors.Forbidden as exc:
                await self._fail(pod, "Forbidden", exc.message)
                return
            except errors.InvalidInput as exc:
                await self._fail(pod, "InvalidPod", exc.message)
                return
            t2 = clock()
            self._remember(status)
            await self._write_status(pod, self.remote.get(uid, status))
            self._failures.pop(uid, None)
            log.debug("pod started", phase=status.phase, resolve_ms=round((t1 - t0) * 1000, 1),
                      create_ms=round((t2 - t1) * 1000, 1), status_ms=round((clock() - t2) * 1000, 1))
        finally:
            request_id_var.reset(token)

    async def _fail(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        """A pod that will never run here: Failed with a reason, and a Warning event."""
        log.warning("pod refused", reason=reason, message=message)
        await self._patch_status(pod, st.failed_status(pod, reason=reason, message=message, host_ips=self.host_ips))
        if _uid(pod) not in self._reported:
            self._reported.add(_uid(pod))
            self.events.record(pod, type_="Warning", reason=reason, message=message)

    # -- status -------------------------------------------------------------------------------

    async def _write_status(self, pod: Mapping[str, Any], remote: wire.PodStatus) -> None:
        self._record_events(pod, remote)
        if remote.phase == "Failed" and remote.reason and _uid(pod) not in self._reported:
            self._reported.add(_uid(pod))
            self.events.record(pod, type_="Warning", reason=remote.reason, message=remote.message or remote.reason)
        await self._patch_status(pod, st.desired_status(pod, remote, host_ips=self.host_ips))

    def _record_events(self, pod: Mapping[str, Any], remote: wire.PodStatus) -> None:
        """Record the events the sidecar reported that are new, or happened again, since the
        last look (probes, hooks: the kubelet's Unhealthy, Killing, FailedPostStartHook...)."""
        if not remote.events:
            return
        uid = _uid(pod)
        before = self._event_counts.get(uid, {})
        seen: dict[tuple[str, str, str], int] = {}
        for event in remote.events:
            key = (event.type, event.reason, event.message)
            seen[key] = before.get(key, 0)
            if seen[key] < event.count and self._event_token(uid):
                seen[key] = event.count
                self.events.record_reported(pod, event)
        self._event_counts[uid] = seen  # only the series the sidecar still reports

    def _event_token(self, uid: str) -> bool:
        """Take a token of the pod's event bucket (False: over the spam filter's budget)."""
        now = asyncio.get_running_loop().time()
        tokens, then = self._event_tokens.get(uid, (float(EVENT_BURST), now))
        tokens = min(float(EVENT_BURST), tokens + (now - then) / EVENT_REFILL_SECONDS)
        if tokens < 1.0:
            self._event_tokens[uid] = (tokens, now)
            return False
        self._event_tokens[uid] = (tokens - 1.0, now)
        return True

    async def _patch_status(self, pod: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
        patch = st.status_patch(pod, desired)
        if patch is None:
            return
        meta = pod.get("metadata") or {}
        log.debug("writing pod status", phase=desired.get("phase"))
        try:
            updated = await self.kube.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", patch)
        except errors.NotFound:
            return
        except (errors.Conflict, errors.InvalidInput) as exc:
            # Another incarnation of the name (uid precondition) or a transition the API refuses.
            log.warning("pod status not written", error=str(exc))
            return
        uid = _uid(pod)
        if _uid(updated) == uid and uid in self.pods:
            old_rv = (self.pods[uid].get("metadata") or {}).get("resourceVersion")
            if _newer_rv(updated["metadata"].get("resourceVersion"), old_rv):
                self.pods[uid] = updated

    # -- terminating --------------------------------------------------------------------------

    def _terminate(self, uid: str, namespace: str, name: str, pod: Mapping[str, Any] | None, grace: int) -> None:
        """Stop the pod in InterLink in the background (it takes up to the grace period) and
        then remove its object; once per uid."""
        if uid in self._terminating:
            return
        task = asyncio.get_running_loop().create_task(self._termination(uid, namespace, name, pod, grace))
        self._terminating[uid] = task

    async def _termination(self, uid: str, namespace: str, name: str, pod: Mapping[str, Any] | None, grace: int) -> None:
        token = request_id_var.set(new_request_id())
        try:
            with structlog.contextvars.bound_contextvars(**pod_context(namespace, name, uid)):
                attempt = 0
                while True:
                    # The object goes only once the containers are gone: giving up here would leave
                    # them running with no pod to show for them. Until then the pod stays Terminating.
                    try:
                        log.info("stopping pod", grace_period_seconds=grace, object_gone=pod is None)
                        await self.provider.delete_pod(namespace, name, uid, grace_period_seconds=grace)
                        break
                    except errors.KodError as exc:
                        delay = self.settings.retry_backoff[min(attempt, len(self.settings.retry_backoff) - 1)]
                        attempt += 1
                        level = log.warning if errors.is_retryable(exc) else log.error
                        level("stopping pod failed, retrying", attempt=attempt, delay=delay, error=str(exc))
                        await asyncio.sleep(delay)
                if pod is not None:
                    await self._remove_object(namespace, name, uid)
                    self._removed.add(uid)
                current = self.remote.get(uid)
                if current is not None:
                    self.remote.pop(uid, None)
        finally:
            self._terminating.pop(uid, None)
            request_id_var.reset(token)
            self.queue.add(uid)

    async def _remove_object(self, namespace: str, name: str, uid: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            await self.kube.delete(f"/api/v1/namespaces/{namespace}/pods/{name}", body)
            log.info("pod object removed")
        except (errors.NotFound, errors.Conflict):
            pass  # already gone, or the name now belongs to another incarnation

    async def drain(self, timeout: float) -> None:
        """Let running terminations finish (a little) at shutdown."""
        if self._terminating:
            await asyncio.wait(list(self._terminating.values()), timeout=timeout)
