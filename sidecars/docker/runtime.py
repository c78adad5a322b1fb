"""The pod runtime: runs pods as Docker containers and keeps their status, driven by Docker events.

    runtime = Runtime(settings, engine, hub)
    await runtime.start()              # event stream + resync (rebuilds the pod table from Docker)
    status, created = await runtime.create(request)
    await runtime.delete("default", "web", uid=None, grace=0)
    await runtime.stop()               # pods keep running; a new process adopts them

How it works:
- A pod is the infra container (record + namespaces + private volumes) and one Docker container
  per run of each of its containers. `create` writes the record and sets the pod up (volumes,
  infra container, volume contents) before answering, so an answered create survives a crash;
  the containers are started by the pod's reconciler.
- Each pod has a worker task only while it has work: Docker events for its containers (and
  timers for back-offs and deadlines) mark it dirty; the worker inspects what changed, decides
  what to do next (`_reconcile`: init containers in order, restart policy, back-off), and
  publishes the status when it changed. No polling; no lock is shared between pods, and no lock
  is held across a wait for a container to finish.
- On (re)connecting to the engine's event stream, everything is listed again (`_resync`), so a
  restart of the sidecar or of dockerd never loses a change, and orphans (objects whose pod
  record is gone) are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from kod import __version__, errors, wire
from kod.quantity import format_bytes, to_bytes
from kod import labels as kl
from kod.log import get_logger, pod_context
from sidecars.docker import bodies, logs, naming, policy, status, validation, volumes
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.hub import Hub
from sidecars.docker.record import PodRecord
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.state import PodState, Run, Slot

log = get_logger(__name__)

#: Docker container events that may change a pod's status.
_CONTAINER_ACTIONS = frozenset({"create", "start", "die", "oom", "destroy", "rename", "pause", "unpause", "kill"})
#: Image events after which a missing image may exist.
_IMAGE_ARRIVED = frozenset({"tag", "load", "import", "pull"})
_IMAGE_CHANGED = _IMAGE_ARRIVED | frozenset({"untag", "delete"})
#: Go's os.ModeSymlink bit, as the engine's path-stat reports it.
_GO_MODE_SYMLINK = 1 << 27
_IMAGE_NEVER_PULL = "ErrImageNeverPull"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Runtime:
    """The Docker sidecar's pod table and everything that changes it."""

    def __init__(self, settings: DockerSidecarSettings, engine: Engine, hub: Hub) -> None:
        self.settings = settings
        self.engine = engine
        self.hub = hub
        self.pods: dict[str, PodState] = {}
        self._by_name: dict[tuple[str, str], str] = {}
        self._images: dict[str, bodies.ImageInfo] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._events_task: asyncio.Task[None] | None = None
        #: Set once the first resync with the engine completed.
        self.ready = asyncio.Event()
        self.engine_error: str | None = "not connected yet"
        self.engine_info: dict[str, Any] = {}
        self.engine_version: str = ""
        #: The engine runs on this machine (a unix socket): its event times and ours compare.
        self._same_clock = settings.docker_url.startswith("unix://")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start following the engine (the first resync sets `ready`)."""
        self._events_task = asyncio.create_task(self._follow_events(), name="docker-events")

    async def stop(self) -> None:
        """Stop the event stream, workers and timers. Pods keep running in Docker."""
        tasks = [t for t in [self._events_task, *self._tasks, *(p.task for p in self.pods.values())] if t]
        for pod in self.pods.values():
            if pod.timer is not None:
                pod.timer.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", task=task.get_name(), error=repr(task.exception()))

    async def wait_ready(self) -> None:
        """Wait for the first sync with the engine; Unavailable after the configured timeout."""
        if self.ready.is_set():
            return
        try:
            await asyncio.wait_for(self.ready.wait(), self.settings.ready_timeout_seconds)
        except TimeoutError as exc:
            raise errors.Unavailable(
                f"the Docker engine is not reachable ({self.engine_error})",
                hint="start dockerd (`python -m localenv up`); the sidecar reconnects by itself",
            ) from exc

    # ------------------------------------------------------------------ the event stream

    async def _follow_events(self) -> None:
        """Follow the engine's events forever; after every (re)connect, resync everything."""
        backoff = self.settings.events_backoff_seconds
        failures = 0
        while True:
            try:
                async for event in self.engine.events({"type": ["container", "image"]}):
                    if event.get("Type") == "kod.subscribed":
                        await self._connected()
                        failures = 0
                        continue
                    self._on_event(event)
                raise errors.Unavailable("the engine closed the event stream")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following whatever happens
                self.engine_error = str(exc)
                delay = backoff[min(failures, len(backoff) - 1)]
                failures += 1
                log.warning("Docker event stream lost; reconnecting", error=str(exc), attempt=failures, delay=delay)
                await asyncio.sleep(delay)

    async def _connected(self) -> None:
        version = await self.engine.version()
        self.engine_version = str(version.get("Version", ""))
        self.engine_info = await self.engine.info()
        await self._resync()
        self.engine_error = None
        if not self.ready.is_set():
            log.info("synced with the Docker engine", pods=len(self.pods), engine=self.engine_version)
        self.ready.set()

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("Type")
        action = str(event.get("Action", "")).split(":", 1)[0]
        actor = event.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        if kind == "image":
            if action in _IMAGE_CHANGED:
                self._images.clear()
            if action in _IMAGE_ARRIVED:
                for pod in self.pods.values():
                    if any(s.waiting and s.waiting[0] == _IMAGE_NEVER_PULL for s in pod.slots.values()):
                        self.kick(pod)
            return
        if kind != "container" or action not in _CONTAINER_ACTIONS:
            return
        if attrs.get(kl.D_MANAGED_BY) != naming.MANAGED_BY_VALUE or attrs.get(naming.SIDECAR) != self.settings.name:
            return
        target = self.pods.get(attrs.get(kl.D_POD_UID, ""))
        if target is None:
            return  # not ours (yet): a resync finds orphans
        cid = str(actor.get("ID", ""))
        if action == "create" and target.knows(cid):
            return  # this process created it and knows its state
        when = float(event.get("timeNano") or 0) / 1e9
        if not (self._same_clock and when):
            when = math.inf
        if when < target.inspected.get(cid, 0.0):
            return  # an inspect sent after the event already saw its effect
        target.events[cid] = max(when, target.events.get(cid, 0.0))
        self.kick(target)

    # ------------------------------------------------------------------ resync

    async def _resync(self) -> None:
        """Rebuild the pod table from the engine: adopt pods, drop orphans, refresh states."""
        owner = naming.owner_filter(self.settings.name)
        listed, vols = await asyncio.gather(self.engine.containers(owner), self.engine.volumes(owner))
        by_uid: dict[str, list[dict[str, Any]]] = {}
        infras: dict[str, dict[str, Any]] = {}
        for c in listed:
            labels = c.get("Labels") or {}
            uid = labels.get(kl.D_POD_UID, "")
            if labels.get(naming.ROLE) == "infra":
                infras[uid] = c
            else:
                by_uid.setdefault(uid, []).append(c)
        adopted: list[PodState] = []
        for uid, c in infras.items():
            pod = self.pods.get(uid)
            if pod is None:
                pod = await self._adopt(c)
                if pod is None:
                    continue
                adopted.append(pod)
            pod.stale.add(c["Id"])
        known = set(self.pods)
        orphans = [c for uid, cs in by_uid.items() if uid not in known for c in cs]
        for pod in self.pods.values():
            if pod.infra_id is not None:
                pod.stale.add(pod.infra_id)
            for slot in pod.slots.values():
                pod.stale.update(r.id for r in slot.runs.values())
            pod.stale.update(c["Id"] for c in by_uid.get(pod.uid, []))
        orphan_volumes = [
            v["Name"]
            for v in vols
            if (v.get("Labels") or {}).get(naming.ROLE) == "volume"
            and (v.get("Labels") or {}).get(kl.D_POD_UID) not in known
        ]
        if orphans or orphan_volumes:
            log.info("removing orphaned Docker objects", containers=len(orphans), volumes=len(orphan_volumes))
            await asyncio.gather(*(self.engine.remove_container(c["Id"]) for c in orphans), return_exceptions=True)
            await asyncio.gather(*(self.engine.remove_volume(v) for v in orphan_volumes), return_exceptions=True)
        # Refresh now what is free (on the first sync: everything, so the first SYNC is right);
        # a pod whose worker or delete holds its lock refreshes when that is done (kicked below).
        # Never wait for a lock here: a graceful delete may hold one for its whole grace period.
        await asyncio.gather(*(self._refresh_locked(p) for p in list(self.pods.values()) if not p.lock.locked()))
        for pod in list(self.pods.values()):
            if pod.deleting and pod.deletion is None:
                log.info("resuming an interrupted delete", **pod_context(pod.namespace, pod.name, pod.uid))
                self._spawn(self.delete(pod.namespace, pod.name, uid=pod.uid, grace=0), f"delete-{pod.uid}")
            else:
                self.kick(pod)
        if adopted:
            log.info("adopted pods from Docker", pods=len(adopted))

    async def _adopt(self, infra: dict[str, Any]) -> PodState | None:
        """A PodState from an infra container found in Docker (None: unusable, removed)."""
        labels = infra.get("Labels") or {}
        uid = labels.get(kl.D_POD_UID, "")
        try:
            record = PodRecord.load(labels.get(naming.RECORD, ""))
            created = datetime.fromisoformat(labels.get(naming.CREATED, ""))
        except (ValidationError, ValueError) as exc:
            log.error("pod record unreadable; removing the pod's objects", pod_uid=uid, error=str(exc))
            await self._remove_uid_objects(uid)
            return None
        planned = volumes.plan(record.pod.spec, self.settings.policy)
        pod = PodState.new(record, created, planned)
        pod.infra_id = infra["Id"]
        names = infra.get("Names") or []
        pod.deleting = pod.renamed = any(naming.is_deleting(n) for n in names)
        for m in infra.get("Mounts") or []:
            dest, name, source = m.get("Destination", ""), m.get("Name", ""), m.get("Source", "")
            if dest == naming.INFRA_MEM:
                pod.locations.mem = (name, source)
            elif dest == naming.INFRA_DISK:
                pod.locations.disk = (name, source)
            elif dest.startswith(naming.INFRA_PVC + "/"):
                pod.locations.pvcs[dest[len(naming.INFRA_PVC) + 1 :]] = (name, source)
        marker = volumes.marker_path(planned)
        if marker is None:
            pod.populated = True
        elif infra.get("State") == "running":
            pod.populated = await self.engine.stat_path(pod.infra_id, marker) is not None
        else:
            # A stopped infra has an empty tmpfs; the pod is finished (or its sandbox died).
            pod.populated = True
        self._register(pod)
        return pod

    async def _remove_uid_objects(self, uid: str) -> None:
        flt = [*naming.owner_filter(self.settings.name), f"{kl.D_POD_UID}={uid}"]
        cs, vs = await asyncio.gather(self.engine.containers(flt), self.engine.volumes(flt))
        results = await asyncio.gather(*(self.engine.remove_container(c["Id"]) for c in cs), return_exceptions=True)
        results += await asyncio.gather(
            *(self.engine.remove_volume(v["Name"]) for v in vs if (v.get("Labels") or {}).get(naming.ROLE) == "volume"),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                # Left for the next resync, which removes objects whose pod is gone.
                log.warning("could not remove a Docker object of a pod", pod_uid=uid, error=str(result))

    def _register(self, pod: PodState) -> None:
        self.pods[pod.uid] = pod
        self._by_name[(pod.namespace, pod.name)] = pod.uid

    def _unregister(self, pod: PodState) -> None:
        self.pods.pop(pod.uid, None)
        if self._by_name.get((pod.namespace, pod.name)) == pod.uid:
            del self._by_name[(pod.namespace, pod.name)]
            # Another incarnation of the name may still be around (being deleted).
            for other in self.pods.values():
                if (other.namespace, other.name) == (pod.namespace, pod.name):
                    self._by_name[(pod.namespace, pod.name)] = other.uid

    # ------------------------------------------------------------------ the pod worker

    def kick(self, pod: PodState) -> None:
        """Schedule the pod's worker (coalescing: a running worker just goes round once more)."""
        if pod.task is not None and not pod.task.done():
            pod.dirty = True
            return
        pod.task = asyncio.create_task(self._work(pod), name=f"pod-{pod.uid}")

    async def _work(self, pod: PodState) -> None:
        while True:
            pod.dirty = False
            if self.pods.get(pod.uid) is not pod:
                return
            try:
                async with pod.lock:
                    if self.pods.get(pod.uid) is not pod:
                        return  # deleted while this worker waited for the lock
                    await self._refresh(pod)
                    if not pod.deleting:
                        await self._reconcile(pod)
                    self._publish(pod)
            except asyncio.CancelledError:
                raise
            except errors.Unavailable as exc:
                # The engine is gone; the resync after reconnecting kicks every pod again.
                log.warning("pod worker: engine unavailable", error=str(exc), **pod_context(pod.namespace, pod.name, pod.uid))
                return
            except Exception:
                log.exception("pod worker failed; retrying in 5 s", **pod_context(pod.namespace, pod.name, pod.uid))
                self._schedule(pod, 5.0)
                return
            if not pod.dirty:
                return

    async def _refresh_locked(self, pod: PodState) -> None:
        async with pod.lock:
            await self._refresh(pod)

    async def _refresh(self, pod: PodState) -> None:
        """Inspect the containers an event (or a resync) marked stale."""
        # An event is answered already when an inspect was sent after it (by the call that
        # caused it, typically): a create in a burst then costs no extra inspect.
        fresh = {cid for cid, when in pod.events.items() if when >= pod.inspected.get(cid, 0.0)}
        ids = [i for i in pod.stale | fresh if i]
        pod.stale.clear()
        pod.events.clear()
        if not ids:
            return
        sent = time.time()
        results = await asyncio.gather(*(self.engine.inspect_container(i) for i in ids), return_exceptions=True)
        for cid, result in zip(ids, results, strict=True):
            if isinstance(result, EngineError) and result.not_found:
                self._forget(pod, cid)
            elif isinstance(result, BaseException):
                raise result
            else:
                self._apply(pod, result)
                pod.inspected[cid] = sent

    def _forget(self, pod: PodState, cid: str) -> None:
        pod.inspected.pop(cid, None)
        if cid == pod.infra_id:
            pod.infra = None
            return
        found = pod.slot_by_id(cid)
        if found is not None:
            slot, run = found
            del slot.runs[run.attempt]

    def _apply(self, pod: PodState, data: dict[str, Any]) -> None:
        labels = (data.get("Config") or {}).get("Labels") or {}
        role = labels.get(naming.ROLE)
        if role == "infra":
            pod.infra_id = data["Id"]
            pod.infra = Run.from_inspect(data)
            if pod.infra.ip:
                pod.last_ip = pod.infra.ip
            if naming.is_deleting(str(data.get("Name", ""))):
                pod.deleting = pod.renamed = True
            return
        slot = pod.slots.get(labels.get(kl.D_CONTAINER, ""))
        if slot is None:
            return
        try:
            attempt = int(labels.get(naming.ATTEMPT, "0"))
        except ValueError:
            return
        slot.runs[attempt] = Run.from_inspect(data, attempt)

    def _publish(self, pod: PodState) -> None:
        """Compute the status; publish it when it changed (never after the pod's DELETED)."""
        if self.pods.get(pod.uid) is not pod:
            return
        current = status.compute(pod, utcnow(), self.settings.restart)
        if pod.deleting and status.main_done(pod):
            current.phase = "Succeeded" if _all_succeeded(current) else "Failed"
        previous = pod.status
        if previous is not None and previous.model_copy(update={"version": 0}) == current:
            return
        # Versions stay monotonic across restarts of the sidecar: microseconds since the epoch.
        pod.version = max(pod.version + 1, int(utcnow().timestamp() * 1_000_000))
        current.version = pod.version
        pod.status = current
        self.hub.publish(wire.WatchEvent(type="STATUS", pod=current))

    def _schedule(self, pod: PodState, delay: float) -> None:
        """Kick the pod after `delay` seconds (keeps the earliest pending timer)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0)
        if pod.timer is not None and not pod.timer.cancelled() and pod.timer.when() <= when:
            return
        if pod.timer is not None:
            pod.timer.cancel()
        pod.timer = loop.call_at(when, self._timer_fired, pod)

    def _timer_fired(self, pod: PodState) -> None:
        pod.timer = None
        if self.pods.get(pod.uid) is pod:
            self.kick(pod)

    # ------------------------------------------------------------------ reconcile

    async def _reconcile(self, pod: PodState) -> None:
        """Take the next steps for `pod`: set-up, init containers in order, main containers,
        restarts after their back-off, stopping what must stop."""
        now = utcnow()
        limit = status.deadline(pod)
        if limit is not None and now < limit:
            self._schedule(pod, (limit - now).total_seconds())
        failure = status.pod_failure(pod, now)
        if failure is not None:
            await self._stop_everything(pod, reason=failure[0])
            return
        if status.main_done(pod) or status.init_failed(pod):
            # The pod is finished: stop restartable init containers, then the infra container
            # (which also drops the tmpfs holding the pod's secrets).
            running = [r for s in pod.slots.values() for r in s.runs.values() if r.running]
            if running:
                await asyncio.gather(*(self.engine.stop_container(r.id, self._grace(pod)) for r in running))
                pod.stale.update(r.id for r in running)
                pod.dirty = True
            elif pod.infra is not None and pod.infra.running:
                await self.engine.stop_container(pod.infra.id, 0)
                pod.stale.add(pod.infra.id)
                pod.dirty = True
            return
        if not pod.set_up:
            if pod.infra is None:
                return
            if pod.infra.started_at is None:
                await self.engine.start_container(pod.infra.id)
                pod.stale.add(pod.infra.id)
                pod.dirty = True
                return
            if not pod.populated:
                if pod.contents is None:
                    return  # waiting for a create that resends the contents
                await self._populate(pod, new_claims=())
            if not pod.set_up:
                return
        for slot in (s for s in pod.slots.values() if s.role == "init"):
            run = slot.latest
            if run is None:
                await self._run(pod, slot, 0)
                return
            if run.pending_start:
                await self._start(pod, run)
                return
            if run.running:
                if slot.restartable:
                    continue
                return
            if slot.restartable:
                await self._maybe_restart(pod, slot, run, now)
                continue
            if not status.failed(run):
                continue
            if pod.spec.restartPolicy == "Never":
                return
            await self._maybe_restart(pod, slot, run, now)
            return
        steps = []
        for slot in (s for s in pod.slots.values() if s.role == "main"):
            run = slot.latest
            if run is None:
                steps.append(self._run(pod, slot, 0))
            elif run.pending_start:
                steps.append(self._start(pod, run))
            elif run.finished and status.restart_wanted(pod.spec.restartPolicy, slot, run):
                steps.append(self._maybe_restart(pod, slot, run, now))
        if steps:
            await asyncio.gather(*steps)

    def _grace(self, pod: PodState) -> int:
        value = pod.spec.terminationGracePeriodSeconds
        return self.settings.default_grace_period_seconds if value is None else value

    async def _stop_everything(self, pod: PodState, *, reason: str) -> None:
        running = [r for s in pod.slots.values() for r in s.runs.values() if r.running or r.pending_start]
        if running:
            log.info("stopping the pod's containers", reason=reason, **pod_context(pod.namespace, pod.name, pod.uid))
            if reason == status.SANDBOX_DIED:
                await asyncio.gather(*(self.engine.kill_container(r.id) for r in running))
            else:
                await asyncio.gather(*(self.engine.stop_container(r.id, self._grace(pod)) for r in running))
            pod.stale.update(r.id for r in running)
            pod.dirty = True
        elif pod.infra is not None and pod.infra.running:
            await self.engine.stop_container(pod.infra.id, 0)
            pod.stale.add(pod.infra.id)
            pod.dirty = True

    async def _maybe_restart(self, pod: PodState, slot: Slot, run: Run, now: datetime) -> None:
        due = status.restart_due(run, self.settings.restart)
        if due is not None and due > now:
            self._schedule(pod, (due - now).total_seconds())
            return
        await self._run(pod, slot, run.attempt + 1)

    async def _start(self, pod: PodState, run: Run) -> None:
        try:
            await self.engine.start_container(run.id)
        except EngineError as exc:
            # The engine keeps the container (state "created", with the error): the status
            # shows StartError and the restart policy applies, as on a kubelet.
            log.info("container failed to start", error=exc.message, **pod_context(pod.namespace, pod.name, pod.uid))
        pod.stale.add(run.id)
        pod.dirty = True

    async def _image(self, ref: str) -> bodies.ImageInfo | None:
        cached = self._images.get(ref)
        if cached is not None:
            return cached
        try:
            info = bodies.ImageInfo.from_inspect(await self.engine.inspect_image(ref))
        except EngineError as exc:
            if exc.not_found:
                return None
            raise
        self._images[ref] = info
        return info

    async def _run(self, pod: PodState, slot: Slot, attempt: int, *, start: bool = True) -> None:
        """Create (and start) run `attempt` of `slot`; on a problem, record why it waits."""
        ctx = pod_context(pod.namespace, pod.name, pod.uid, container=slot.name)
        image = await self._image(slot.spec.image)
        if image is None:
            slot.waiting = (
                _IMAGE_NEVER_PULL,
                f'Container image "{slot.spec.image}" is not present on the desktop node, and images are '
                "never pulled here: build or load it into the local Docker engine (it starts by itself then)",
            )
            return
        assert pod.infra_id is not None
        try:
            mounts = volumes.container_mounts(slot.spec, pod.planned, pod.locations)
            await self._check_subpaths(pod, slot)
            body = bodies.container_body(
                pod.record,
                slot.spec,
                role=slot.role,
                attempt=attempt,
                infra_id=pod.infra_id,
                image=image,
                mounts=mounts,
                settings=self.settings,
            )
        except (bodies.ConfigError, LookupError) as exc:
            slot.waiting = ("CreateContainerConfigError", getattr(exc, "message", str(exc)))
            log.warning("container config error", message=slot.waiting[1], **ctx)
            return
        if mounts.host_access:
            log.warning(
                "container gets host resources that weaken isolation (see docs/docker-sidecar.md)",
                host_paths=mounts.host_access,
                **ctx,
            )
        name = naming.container_name(pod.namespace, pod.name, pod.uid, slot.name, attempt)
        try:
            cid = await self.engine.create_container(name, body)
        except EngineError as exc:
            if exc.conflict:  # created before a crash: adopt it
                data = await self.engine.inspect_container(name)
                self._apply(pod, data)
                slot.waiting = None
                pod.dirty = True
                return
            if exc.not_found:  # the image went away meanwhile
                self._images.pop(slot.spec.image, None)
                pod.dirty = True
                return
            # As the kubelet does, try again later (the cause may go away: a host path that
            # appears, a name the engine still holds), with a back-off.
            slot.waiting = ("CreateContainerError", exc.message)
            slot.create_failures += 1
            delay = min(2.0 ** (slot.create_failures - 1), self.settings.restart.max_seconds)
            self._schedule(pod, delay)
            log.warning("container create failed", error=exc.message, retry_in=delay, **ctx)
            return
        slot.waiting = None
        slot.create_failures = 0
        run = Run(id=cid, attempt=attempt, state="created")
        slot.runs[attempt] = run
        log.debug("container created", attempt=attempt, **ctx)
        # The kubelet keeps one dead container per container (for `logs --previous`).
        old = [r for a, r in slot.runs.items() if a < attempt - 1]
        for r in old:
            del slot.runs[r.attempt]
            pod.inspected.pop(r.id, None)
        if old:
            self._spawn(asyncio.gather(*(self.engine.remove_container(r.id) for r in old)), f"gc-{pod.uid}")
        if start:
            await self._start(pod, run)

    async def _check_subpaths(self, pod: PodState, slot: Slot) -> None:
        """A subPath into a volume containers can write may have been replaced by a symlink
        (pointing anywhere on the host, since dockerd resolves the bind source): refuse those,
        and create missing subPath directories of PVCs."""
        assert pod.infra_id is not None
        for pv, sub in volumes.writable_subpaths(slot.spec, pod.planned):
            parts = sub.split("/")
            for i in range(1, len(parts) + 1):
                path = volumes.infra_path(pv, "/".join(parts[:i]))
                st = await self.engine.stat_path(pod.infra_id, path)
                if st is None:
                    if pv.kind != "pvc":
                        break
                    await self._mkdir_pvc(pod, pv, "/".join(parts[:i]))
                    continue
                if int(st.get("mode", 0)) & _GO_MODE_SYMLINK:
                    raise bodies.ConfigError(f"subPath {sub!r} of volume {pv.name!r} goes through a symlink; refused")

    async def _mkdir_pvc(self, pod: PodState, pv: volumes.PlannedVolume, sub: str) -> None:
        assert pod.infra_id is not None and pv.claim is not None
        tar = volumes._Tar()
        tar.dir(sub, 0o777)
        await self.engine.put_archive(pod.infra_id, volumes.infra_path(pv), tar.close())

    # ------------------------------------------------------------------ create

    async def create(self, request: wire.PodCreateRequest) -> tuple[wire.PodStatus, bool]:
        """Accept a pod: (status, True) when created now, (status, False) when the uid existed.
        Raises InvalidInput (400), Forbidden (403: the policy refused it; nothing is created),
        Conflict (409: another pod of that name exists) or Unavailable (503)."""
        validation.validate(request)
        meta = request.pod.metadata
        violations = policy.check(request.pod, self.settings.policy)
        if violations:
            raise errors.Forbidden(
                f"pod {meta.namespace}/{meta.name} is refused by the desktop policy: "
                + "; ".join(str(v) for v in violations),
                hint="see docs/docker-sidecar.md for what the desktop node allows and how to change it",
            )
        await self.wait_ready()
        existing = self.pods.get(meta.uid)
        if existing is not None:
            again = await self._create_again(existing, request)
            if again is not None:
                return again, False
            return await self.create(request)  # the first create failed and cleaned up meanwhile
        other_uid = self._by_name.get((meta.namespace, meta.name))
        other = self.pods.get(other_uid or "")
        if other is not None and not other.deleting:
            raise errors.Conflict(
                f"pod {meta.namespace}/{meta.name} already runs here with uid {other.uid}; delete it first"
            )
        if await self._image(self.settings.infra_image) is None:
            raise errors.Unavailable(
                f"the pod infra image {self.settings.infra_image} is missing from the Docker engine",
                hint="build it with `python -m localenv images` (or set infra_image)",
            )
        record = PodRecord.from_request(request)
        pod = PodState.new(record, utcnow().replace(microsecond=0), volumes.plan(request.pod.spec, self.settings.policy))
        pod.contents = list(request.volumes)
        ctx = pod_context(meta.namespace, meta.name, meta.uid)
        self._register(pod)
        async with pod.lock:
            try:
                await self._set_up(pod)
            except BaseException as exc:
                log.warning("pod set-up failed; removing what was created", error=str(exc), **ctx)
                self._unregister(pod)
                await asyncio.gather(self._remove_objects(pod), return_exceptions=True)
                await self._remove_uid_objects(pod.uid)
                if isinstance(exc, EngineError):
                    raise _engine_error(exc, "setting up the pod") from exc
                raise
            # The first round of the pod's worker, here: everything is fresh, so the containers
            # start without a detour through the event stream (the answer may already say
            # Running). Later rounds are driven by events.
            try:
                await self._reconcile(pod)
                await self._refresh(pod)
            except (EngineError, errors.Unavailable) as exc:
                log.warning("starting the pod's containers failed; retrying on the next event", error=str(exc), **ctx)
            finally:
                # Also when the caller went away meanwhile: the pod exists, its worker goes on.
                pod.dirty = True
                self.kick(pod)
            self._publish(pod)
        log.info("pod created", pod_ip=pod.last_ip, **ctx)
        assert pod.status is not None
        return pod.status, True

    async def _create_again(self, pod: PodState, request: wire.PodCreateRequest) -> wire.PodStatus | None:
        """Create for a known uid: idempotent; completes a set-up a crash interrupted. None when
        the pod vanished meanwhile (a concurrent first create failed and removed it)."""
        if pod.deleting:
            raise errors.Conflict(f"pod {pod.namespace}/{pod.name} (uid {pod.uid}) is being deleted")
        async with pod.lock:
            if self.pods.get(pod.uid) is not pod:
                return None
            if not pod.populated and pod.infra is not None:
                pod.contents = list(request.volumes)
                if pod.infra.started_at is None:
                    await self.engine.start_container(pod.infra.id)
                    await self._refresh_infra(pod)
                await self._populate(pod, new_claims=())
                self.kick(pod)
            self._publish(pod)
        assert pod.status is not None
        return pod.status

    async def _set_up(self, pod: PodState) -> None:
        """Volumes, the infra container (with the record), its start, the volume contents."""
        meta = pod.record.pod.metadata
        labels = naming.pod_labels(self.settings.name, meta.namespace, meta.name, meta.uid, meta.labels)
        steps = []
        for area in volumes.areas(pod.planned):
            steps.append(self._create_area(pod, area, labels))
        new_claims: list[str] = []
        for claim in volumes.claims(pod.planned):
            steps.append(self._ensure_claim(pod, claim, new_claims))
        await asyncio.gather(*steps)
        body = bodies.infra_body(
            pod.record, self.settings, mounts=volumes.infra_mounts(pod.locations), created=pod.created
        )
        name = naming.infra_name(meta.namespace, meta.name, meta.uid)
        try:
            pod.infra_id = await self.engine.create_container(name, body)
        except EngineError as exc:
            if not exc.conflict:
                raise
            pod.infra_id = (await self.engine.inspect_container(name))["Id"]
        steps = [self._start_infra(pod, new_claims)]
        if not pod.spec.initContainers and not volumes.areas(pod.planned) and not volumes.claims(pod.planned):
            # Creating the containers then needs only the infra container's id: do it while the
            # engine starts the infra container (their start waits for it). With volumes, the
            # engine checks bind sources at create: those exist once the contents are written.
            steps += [self._run(pod, slot, 0, start=False) for slot in pod.slots.values()]
        await asyncio.gather(*steps)

    async def _start_infra(self, pod: PodState, new_claims: list[str]) -> None:
        assert pod.infra_id is not None
        await self.engine.start_container(pod.infra_id)
        await self._refresh_infra(pod)
        await self._populate(pod, new_claims=new_claims)

    async def _refresh_infra(self, pod: PodState) -> None:
        assert pod.infra_id is not None
        sent = time.time()
        self._apply(pod, await self.engine.inspect_container(pod.infra_id))
        pod.inspected[pod.infra_id] = sent

    async def _create_area(self, pod: PodState, area: str, labels: dict[str, str]) -> None:
        name = naming.volume_name(pod.namespace, pod.name, pod.uid, area)  # type: ignore[arg-type]
        vlabels = {**labels, naming.ROLE: "volume", naming.VOLUME_KIND: area}
        opts: dict[str, str] = {}
        if area == "mem":
            size = self.settings.memory_volume_size
            opts = {"type": "tmpfs", "device": "tmpfs", "o": "mode=0700" + (f",size={_tmpfs_size(size)}" if size else "")}
        result = await self.engine.create_volume(name, vlabels, opts)
        location = (name, str(result["Mountpoint"]))
        if area == "mem":
            pod.locations.mem = location
        else:
            pod.locations.disk = location

    async def _ensure_claim(self, pod: PodState, claim: str, new_claims: list[str]) -> None:
        name = naming.pvc_volume_name(pod.namespace, claim)
        try:
            result = await self.engine.inspect_volume(name)
        except EngineError as exc:
            if not exc.not_found:
                raise
            labels = {
                **naming.base_labels(self.settings.name),
                naming.ROLE: "pvc",
                kl.D_POD_NAMESPACE: pod.namespace,
                naming.PVC_CLAIM: claim,
            }
            result = await self.engine.create_volume(name, labels)
            new_claims.append(claim)
        pod.locations.pvcs[claim] = (name, str(result["Mountpoint"]))

    async def _populate(self, pod: PodState, *, new_claims: Iterable[str]) -> None:
        """Write the private volumes' directories and contents (one archive, marker last)."""
        assert pod.infra_id is not None
        claims = list(new_claims)
        if volumes.marker_path(pod.planned) is not None or claims:
            tar = volumes.population_tar(pod.spec, pod.planned, pod.contents or [], new_claims=claims)
            await self.engine.put_archive(pod.infra_id, naming.INFRA_ROOT, tar)
        pod.populated = True
        pod.contents = None  # secrets live in the pod's tmpfs only from now on

    async def _remove_objects(self, pod: PodState) -> None:
        """Remove the pod's containers and private volumes (not PVC volumes); idempotent."""
        ids = [r.id for s in pod.slots.values() for r in s.runs.values()]
        if pod.infra_id is not None:
            ids.append(pod.infra_id)
        await asyncio.gather(*(self.engine.remove_container(i) for i in ids))
        names = {area[0] for area in (pod.locations.mem, pod.locations.disk) if area is not None}
        names |= {naming.volume_name(pod.namespace, pod.name, pod.uid, k) for k in volumes.areas(pod.planned)}
        await asyncio.gather(*(self.engine.remove_volume(n) for n in names))

    async def _mark_deleting(self, pod: PodState) -> None:
        """Rename the infra container: a restarted sidecar then finishes the delete."""
        if pod.infra_id is None or pod.infra is None or pod.renamed:
            return
        deleting_name = naming.infra_name(pod.namespace, pod.name, pod.uid) + naming.DELETING_SUFFIX
        try:
            await self.engine.rename_container(pod.infra_id, deleting_name)
        except EngineError as exc:
            # Gone, or renamed already (by an earlier process): nothing to mark.
            if not (exc.not_found or exc.conflict or "same name" in exc.message):
                raise
        pod.renamed = True

    # ------------------------------------------------------------------ delete

    def lookup(self, namespace: str, name: str, uid: str | None = None) -> PodState:
        """The pod named `namespace/name` (and with `uid`, when given), or NotFound."""
        if uid:
            pod = self.pods.get(uid)
            if pod is None or (pod.namespace, pod.name) != (namespace, name):
                raise errors.NotFound(f"pod {namespace}/{name} with uid {uid} is not on this node")
            return pod
        pod_uid = self._by_name.get((namespace, name))
        pod = self.pods.get(pod_uid or "")
        if pod is None:
            raise errors.NotFound(f"pod {namespace}/{name} is not on this node")
        return pod

    async def delete(self, namespace: str, name: str, *, uid: str | None, grace: int | None) -> wire.PodStatus:
        """Stop the pod's containers (the stop signal, then SIGKILL after `grace` seconds; None:
        the pod's terminationGracePeriodSeconds) and remove all its objects but PVC volumes.
        May be called more than once: a later call with a shorter grace period shortens it, and
        every call returns the final status. NotFound when the pod is (already) gone."""
        await self.wait_ready()
        pod = self.lookup(namespace, name, uid)
        grace = self._grace(pod) if grace is None else grace
        if pod.deletion is not None:
            if pod.grace is not None and grace < pod.grace:
                pod.grace = grace
                self._spawn(self._kill_all(pod), f"kill-{pod.uid}")
            return await asyncio.shield(pod.deletion)
        pod.deletion = asyncio.get_running_loop().create_future()
        pod.grace = grace
        self._spawn(self._delete(pod, grace), f"delete-{pod.uid}")
        return await asyncio.shield(pod.deletion)

    async def _kill_all(self, pod: PodState) -> None:
        runs = [r for s in pod.slots.values() for r in s.runs.values() if r.running]
        await asyncio.gather(*(self.engine.kill_container(r.id) for r in runs), return_exceptions=True)

    async def _delete(self, pod: PodState, grace: int) -> None:
        assert pod.deletion is not None
        ctx = pod_context(pod.namespace, pod.name, pod.uid)
        future = pod.deletion
        try:
            pod.deleting = True
            if pod.timer is not None:
                pod.timer.cancel()
                pod.timer = None
            async with pod.lock:
                await self._refresh(pod)
                # A second delete may have shortened the grace period meanwhile.
                grace = pod.grace if pod.grace is not None else grace
                runs = [r for s in pod.slots.values() for r in s.runs.values() if r.running or r.pending_start]
                steps = [self._mark_deleting(pod)]
                if grace == 0:
                    steps += [self.engine.kill_container(r.id) for r in runs]
                else:
                    steps += [self.engine.stop_container(r.id, grace) for r in runs]
                await asyncio.gather(*steps)
                if runs:
                    pod.stale.update(r.id for r in runs)
                    await self._refresh(pod)
                final = status.compute(pod, utcnow(), self.settings.restart)
                final.phase = "Succeeded" if _all_succeeded(final) else "Failed"
                final.version = max(pod.version + 1, int(utcnow().timestamp() * 1_000_000))
                await self._remove_objects(pod)
                self._unregister(pod)
            # Objects a crashed predecessor created and never recorded: found by label, later.
            self._spawn(self._remove_uid_objects(pod.uid), f"sweep-{pod.uid}")
            log.info("pod deleted", grace=grace, phase=final.phase, **ctx)
            self.hub.publish(wire.WatchEvent(type="DELETED", pod=final))
            future.set_result(final)
        except BaseException as exc:
            pod.deletion = None  # a later delete retries
            if isinstance(exc, EngineError):
                exc = _engine_error(exc, "deleting the pod")
            if not future.done():
                future.set_exception(exc)
            # Retrieve it here so an unawaited failure is not reported as "never retrieved".
            future.exception()
            log.warning("pod delete failed", error=str(exc), **ctx)

    # ------------------------------------------------------------------ read

    def status_of(self, pod: PodState) -> wire.PodStatus:
        """The pod's last status (computed now when none was published yet)."""
        if pod.status is None:
            self._publish(pod)
        assert pod.status is not None
        return pod.status

    def list(self) -> list[wire.PodStatus]:
        return [self.status_of(p) for p in list(self.pods.values())]

    async def get(self, namespace: str, name: str) -> wire.PodStatus:
        await self.wait_ready()
        return self.status_of(self.lookup(namespace, name))

    async def logs(
        self, namespace: str, name: str, container: str, opts: wire.LogOptions
    ) -> AsyncIterator[bytes]:
        """The container's log bytes as `kubectl logs` expects them. Raises before the first
        byte: NotFound (no such pod or container), InvalidInput (nothing to show yet)."""
        await self.wait_ready()
        pod = self.lookup(namespace, name)
        slot = pod.slots.get(container)
        if slot is None:
            raise errors.NotFound(f'container "{container}" is not valid for pod "{name}"')
        run = slot.previous if opts.previous else slot.latest
        if run is None:
            if opts.previous:
                raise errors.InvalidInput(f'previous terminated container "{container}" in pod "{name}" not found')
            reason = slot.waiting[0] if slot.waiting else "ContainerCreating"
            raise errors.InvalidInput(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        params = logs.docker_params(opts)
        stream = self.engine.logs(run.id, params)
        # Open the stream now so that errors surface before the caller starts answering.
        first = await _first_chunk(stream)
        return logs.limit(logs.demux(_prepend(first, stream), tty=bool(slot.spec.tty)), opts.limitBytes)

    # ------------------------------------------------------------------ node

    def node_info(self) -> wire.NodeInfo:
        """Capacity (settings, else the engine), labels, taints and health, for ping."""
        cap = self.settings.capacity
        capacity: dict[str, str] = {}
        cpus = cap.cpu or str(self.engine_info.get("NCPU") or os.cpu_count() or 1)
        mem_total = int(self.engine_info.get("MemTotal") or _host_memory() or 0)
        capacity["cpu"] = cpus
        memory = cap.memory or (format_bytes(mem_total) if mem_total else None)
        if memory:
            capacity["memory"] = memory
        capacity["pods"] = str(cap.pods)
        capacity.update(cap.extra)
        health = wire.SidecarHealth(name=self.settings.name, ok=self.engine_error is None, message=self.engine_error)
        return wire.NodeInfo(
            capacity=capacity,
            allocatable=dict(capacity),
            taints=list(self.settings.taints),
            labels=dict(self.settings.node_labels),
            sidecars=[health],
            version=f"kod-docker-sidecar/{__version__} docker/{self.engine_version or 'unknown'}",
        )


def _all_succeeded(st: wire.PodStatus) -> bool:
    for c in st.containerStatuses:
        term = c.state.terminated
        if term is None or term.exitCode != 0:
            return False
    return True


def _host_memory() -> int | None:
    """MemTotal of /proc/meminfo in bytes (the engine's figure is preferred; this is for when the
    engine cannot be reached)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _tmpfs_size(value: str) -> str:
    return str(to_bytes(value))


def _engine_error(exc: EngineError, doing: str) -> errors.KodError:
    if exc.status == 400:
        return errors.InvalidInput(f"the Docker engine refused {doing}: {exc.message}")
    return errors.Unavailable(f"the Docker engine failed {doing}: {exc.message}")


async def _first_chunk(stream: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except EngineError as exc:
        if exc.not_found:
            raise errors.NotFound("the container's logs are gone (it was removed)") from exc
        raise _engine_error(exc, "reading logs") from exc


async def _prepend(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield first
    async with contextlib.aclosing(rest):  # type: ignore[type-var]
        async for chunk in rest:
            yield chunk
