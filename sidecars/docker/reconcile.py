"""Reconciliation: the next steps for one pod, from what Docker shows of it now.

    wake = await reconciler.reconcile(pod)   # the pod's lock held, its state just refreshed

Contracts:
- Steps follow the kubelet: init containers one at a time and in order (restartable ones, the
  native sidecars, start and keep running), then every main container at once; a finished run
  restarts as the restart policy says, after its CrashLoopBackOff delay; a failed pod (deadline
  exceeded, sandbox died) and a finished one get their containers stopped (`stop.py`), then the
  infra container, which drops the tmpfs holding the pod's secrets. Nothing is created or started
  for a failed pod: a round that began before the deadline looks again right before each create
  and start (on a loaded machine it may reach them after it), and a container created for
  nothing is removed; one whose start was under way is stopped by the next round, and the pod
  reads Failed only once it stopped (`status.compute`).
- Nothing blocks on a container: each call starts what is due and returns. `pod.dirty` set means
  "go round again now" (something was started or stopped); the returned number of seconds asks
  for another round even if no event comes (a back-off, a deadline); None asks for none.
- A container the engine cannot create yet records why in its slot (`Slot.waiting`:
  ErrImageNeverPull, CreateContainerConfigError, CreateContainerError with a back-off), which the
  status shows; nothing here raises for those. A mount the mounter refuses (a symlink on a
  subPath, a host path of the wrong type or owner) or cannot find yet is retried with the same
  back-off, as the kubelet retries a container whose mounts fail.
- A pod whose set-up is not complete is left to its create (`create.py`), which holds the lock
  for the whole set-up.
- What the kubelet itself decides about a running container is done in the background, never
  under the pod's lock: its postStart hook right after the start (`hooks.py`), and the kill a
  failed liveness or startup probe or postStart hook asked for (`Slot.kill`: the Killing event,
  the preStop hook, the stop); the restart then follows the restart policy as for any exit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kod.log import get_logger, pod_context
from sidecars.docker import bodies, hooks, naming, status, termination, volumes
from sidecars.docker.ceilings import Ceilings
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.images import ImageCache
from sidecars.docker.mounter import Mounter, MountMissing, MountRefused
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.state import PodState, Run, Slot, utcnow
from sidecars.docker.stop import grace_period, stop_containers, stop_infra, stop_run
from sidecars.docker.tasks import Background

log = get_logger(__name__)

IMAGE_NEVER_PULL = "ErrImageNeverPull"


def _earliest(*delays: float | None) -> float | None:
    wanted = [d for d in delays if d is not None]
    return min(wanted) if wanted else None


class Reconciler:
    """Decides and takes the next steps of pods (one pod per call; callers hold its lock)."""

    def __init__(
        self,
        settings: DockerSidecarSettings,
        engine: Engine,
        images: ImageCache,
        background: Background,
        mounter: Mounter,
        ceilings: Callable[[], Ceilings],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.images = images
        self.background = background
        self.mounter = mounter
        self._ceilings = ceilings
        #: Looks at a pod again (the worker's kick; set by the runtime once the worker exists).
        self.kick: Callable[[PodState], None] = lambda pod: None
        #: Container ids being killed now (a kill the kubelet decided).
        self._killing: set[str] = set()

    async def reconcile(self, pod: PodState) -> float | None:
        """Take the next steps for `pod`: init containers in order, main containers, restarts
        after their back-off, stopping what must stop. Returns when to look again (seconds)."""
        now = utcnow()
        limit = status.deadline(pod)
        wake = (limit - now).total_seconds() if limit is not None and now < limit else None
        failure = status.pod_failure(pod, now)
        if failure is not None:
            await self._stop_everything(pod, reason=failure[0])
            return wake
        if status.main_done(pod) or status.init_failed(pod):
            # The pod is finished: stop restartable init containers, then the infra container.
            await self._stop_everything(pod, reason=None)
            return wake
        if not pod.set_up:
            return wake  # its create is still setting it up (and holds the lock meanwhile)
        self._kills(pod)
        for slot in (s for s in pod.slots.values() if s.role == "init"):
            run = slot.latest
            if run is None:
                return _earliest(wake, await self.run(pod, slot, 0))
            if run.pending_start:
                await self._start(pod, run)
                return wake
            if run.running:
                if slot.restartable:
                    continue
                return wake
            if slot.restartable:
                wake = _earliest(wake, await self._maybe_restart(pod, slot, run, now))
                continue
            if not status.failed(run):
                continue
            if pod.spec.restartPolicy == "Never":
                return wake
            return _earliest(wake, await self._maybe_restart(pod, slot, run, now))
        steps = []
        for slot in (s for s in pod.slots.values() if s.role == "main"):
            run = slot.latest
            if run is None:
                steps.append(self.run(pod, slot, 0))
            elif run.pending_start:
                steps.append(self._start(pod, run))
            elif run.finished and status.restart_wanted(pod.spec.restartPolicy, slot, run):
                steps.append(self._maybe_restart(pod, slot, run, now))
        if steps:
            wake = _earliest(wake, *await asyncio.gather(*steps))
        return wake

    def _kills(self, pod: PodState) -> None:
        """Start the kills the kubelet decided (probes, postStart) that are not under way yet."""
        for slot in pod.slots.values():
            run = slot.latest
            if slot.kill is None:
                continue
            if run is None or slot.kill[0] != run.id:
                slot.kill = None  # about a run that is gone or replaced
                continue
            if not run.running or run.id in self._killing:
                continue
            _, message, grace = slot.kill
            self._killing.add(run.id)
            self.background.spawn(self._kill(pod, slot, run, message, grace), f"kill-{pod.uid}-{slot.name}")

    async def _kill(self, pod: PodState, slot: Slot, run: Run, message: str, grace: int | None) -> None:
        ctx = pod_context(pod.namespace, pod.name, pod.uid, container=slot.name)
        log.info("killing the container", reason=message, **ctx)
        pod.note("Normal", "Killing", message)
        self.kick(pod)
        seconds = grace if grace is not None else grace_period(pod, self.settings.default_grace_period_seconds)
        try:
            await stop_run(self.engine, pod, slot, run, seconds)
        finally:
            self._killing.discard(run.id)
            self.kick(pod)

    async def _post_start(self, pod: PodState, slot: Slot, run: Run) -> None:
        try:
            ok = await hooks.post_start(self.engine, pod, slot, run)
        finally:
            if slot.post_start == run.id:
                slot.post_start = None
        if not ok:
            slot.kill = (run.id, "FailedPostStartHook", None)
        self.kick(pod)

    async def _stop_everything(self, pod: PodState, *, reason: str | None) -> None:
        """Stop the pod's containers (SIGKILL when its sandbox died: nothing can shut down
        cleanly without its network); once none runs, its infra container."""
        if any(r.running for r in pod.runs()):
            if reason is not None:
                log.info("stopping the pod's containers", reason=reason, **pod_context(pod.namespace, pod.name, pod.uid))
            grace = 0 if reason == status.SANDBOX_DIED else grace_period(pod, self.settings.default_grace_period_seconds)
            await stop_containers(self.engine, pod, grace)
            pod.dirty = True
        elif await stop_infra(self.engine, pod):
            pod.dirty = True

    async def _maybe_restart(self, pod: PodState, slot: Slot, run: Run, now: datetime) -> float | None:
        due = status.restart_due(run, self.settings.restart)
        if due is not None and due > now:
            return (due - now).total_seconds()
        return await self.run(pod, slot, run.attempt + 1)

    def _too_late(self, pod: PodState, what: str) -> bool:
        """Whether the pod failed (its deadline ran out, its sandbox died) since this round
        looked: on a loaded machine a round that began in time may reach a create or a start
        after the deadline, and the kubelet starts nothing for a pod past it. The next round
        stops the rest."""
        failure = status.pod_failure(pod, utcnow())
        if failure is None:
            return False
        log.info(f"not {what} the container: the pod failed", reason=failure[0],
                 **pod_context(pod.namespace, pod.name, pod.uid))
        pod.dirty = True
        return True

    async def _start(self, pod: PodState, run: Run) -> None:
        if self._too_late(pod, "starting"):
            await self._discard(pod, run)
            return
        # Stale before the call: whatever becomes of it, the next round inspects the container
        # rather than trusting "created" (a second start would run an exited process again).
        pod.stale.add(run.id)
        try:
            await self.engine.start_container(run.id)
        except EngineError as exc:
            # The engine keeps the container (state "created", with the error): the status
            # shows StartError and the restart policy applies, as on a kubelet.
            log.info("container failed to start", error=exc.message, **pod_context(pod.namespace, pod.name, pod.uid))
        else:
            found = pod.slot_by_id(run.id)
            if found is not None and found[0].spec.lifecycle is not None and found[0].spec.lifecycle.postStart is not None:
                found[0].post_start = run.id
                self.background.spawn(self._post_start(pod, found[0], run), f"post-start-{pod.uid}-{found[0].name}")
        pod.dirty = True

    async def run(self, pod: PodState, slot: Slot, attempt: int, *, start: bool = True) -> float | None:
        """Create (and start) run `attempt` of `slot`; on a problem, record why it waits.
        Returns the back-off after which to try a refused create again (None: no retry due)."""
        ctx = pod_context(pod.namespace, pod.name, pod.uid, container=slot.name)
        image = await self.images.get(slot.spec.image)
        if image is None:
            slot.waiting = (
                IMAGE_NEVER_PULL,
                f'Container image "{slot.spec.image}" is not present on the desktop node, and images are '
                "never pulled here: build or load it into the local Docker engine (it starts by itself then)",
            )
            return None
        assert pod.infra_id is not None
        try:
            staged = await self.mounter.sources(pod, slot.spec)
        except (MountRefused, MountMissing) as exc:
            return self._mount_failed(slot, exc, ctx)
        try:
            mounts = volumes.container_mounts(slot.spec, pod.planned, pod.locations, staged)
            message_file = termination.mount(slot.spec, attempt, pod.locations.root("disk"))
            if message_file is not None:
                mounts.mounts.append(message_file)
            body = bodies.container_body(
                pod.record,
                slot.spec,
                role=slot.role,
                attempt=attempt,
                infra_id=pod.infra_id,
                image=image,
                mounts=mounts,
                settings=self.settings,
                ceilings=self._ceilings(),
            )
        except (bodies.ConfigError, LookupError) as exc:
            slot.waiting = ("CreateContainerConfigError", getattr(exc, "message", str(exc)))
            log.warning("container config error", message=slot.waiting[1], **ctx)
            return None
        if mounts.host_access:
            log.warning(
                "container gets host resources that weaken isolation (see docs/docker-sidecar.md)",
                host_paths=mounts.host_access,
                **ctx,
            )
        name = naming.container_name(pod.namespace, pod.name, pod.uid, slot.name, attempt)
        if self._too_late(pod, "creating"):
            return None
        try:
            await termination.reset(self.engine, pod, slot, attempt)
            cid = await self.engine.create_container(name, body)
        except EngineError as exc:
            if exc.conflict:  # created before a crash: adopt it, if it joins this infra container
                data = await self.engine.inspect_container(name)
                if (data.get("HostConfig") or {}).get("NetworkMode") != f"container:{pod.infra_id}":
                    # Made for an infra container that is gone (the engine finished a create that
                    # was rolled back): it could never start. Make it again.
                    log.info("removing a container made for an earlier infra container", **ctx)
                    await self.engine.remove_container(data["Id"])
                else:
                    pod.apply(data)
                    slot.waiting = None
                pod.dirty = True
                return None
            if exc.not_found:  # the image went away meanwhile
                self.images.forget(slot.spec.image)
                pod.dirty = True
                return None
            # As the kubelet does, try again later (the cause may go away: a host path that
            # appears, a name the engine still holds), with a back-off.
            slot.waiting = ("CreateContainerError", exc.message)
            slot.create_failures += 1
            delay = min(2.0 ** (slot.create_failures - 1), self.settings.restart.max_seconds)
            log.warning("container create failed", error=exc.message, retry_in=delay, **ctx)
            return delay
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
            self.background.spawn(self._remove_runs(old), f"gc-{pod.uid}")
        if start:
            await self._start(pod, run)
        return None

    async def _discard(self, pod: PodState, run: Run) -> None:
        """Remove a run that will never start: the kubelet would not have created it, so the
        status shows the container as before it (waiting, or its last run's end)."""
        found = pod.slot_by_id(run.id)
        if found is not None and found[0].runs.get(run.attempt) is run:
            del found[0].runs[run.attempt]
        pod.inspected.pop(run.id, None)
        await self.engine.remove_container(run.id)

    async def _remove_runs(self, runs: list[Run]) -> None:
        await asyncio.gather(*(self.engine.remove_container(r.id) for r in runs))

    def _mount_failed(self, slot: Slot, exc: MountRefused | MountMissing, ctx: dict[str, Any]) -> float:
        """Record why a mount failed; try again after a back-off (the cause may go away: a host
        path that appears, a symlink a racing container removes)."""
        slot.waiting = (exc.reason, str(exc))
        slot.create_failures += 1
        delay = min(2.0 ** (slot.create_failures - 1), self.settings.restart.max_seconds)
        log.warning("container mount refused", reason=exc.reason, message=str(exc), retry_in=delay, **ctx)
        return delay
