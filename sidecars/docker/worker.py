"""The per-pod worker: one task per pod, only while the pod has work.

    worker.kick(pod)             # an event, a timer or a call: look at the pod again
    worker.schedule(pod, 10.0)   # a back-off or a deadline: look again in 10 s

A round takes the pod's lock, inspects the containers marked stale (`refresh`), lets the
reconciler take the next steps (unless the pod is being deleted), and publishes the status when
it changed (`publish`). Contracts:
- Kicks coalesce: kicking a pod whose worker runs makes it go round once more, never run twice.
- No lock is shared between pods, and none is held across a wait for a container to finish.
- A pod deleted meanwhile (no longer current in the table) is left alone: a worker or timer of
  it ends without touching it, and no STATUS follows its DELETED.
- The engine being unavailable ends the round quietly (the resync after the reconnect kicks
  every pod); any other failure is logged and retried in `RETRY_SECONDS`.
- Status versions only increase, across restarts of the sidecar too (`PodState.next_version`).
- After each round the pod's probes are brought in line (`probes.Prober.sync`: workers for new
  containers with probes; nothing for a pod without probes), and a refresh reads the
  termination message of every run it finds finished (`termination.collect`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kod import errors, wire
from kod.hub import Hub
from kod.log import get_logger, pod_context
from sidecars.docker import status, termination
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.probes import Prober
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.state import PodState, utcnow
from sidecars.docker.table import PodTable

log = get_logger(__name__)

#: A round that failed unexpectedly is tried again after this many seconds.
RETRY_SECONDS = 5.0

#: Takes the next steps for a pod (its lock held); returns in how many seconds it wants another
#: round even if no event comes (a back-off, a deadline), or None.
Reconcile = Callable[[PodState], Awaitable[float | None]]


class Worker:
    """Runs, coalesces and times the rounds of every pod."""

    def __init__(
        self, settings: DockerSidecarSettings, engine: Engine, table: PodTable, hub: Hub, reconcile: Reconcile
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.table = table
        self.hub = hub
        self._reconcile = reconcile
        self.prober = Prober(engine, kick=self.kick, alive=table.is_current)

    # ---------------------------------------------------------------- scheduling

    def kick(self, pod: PodState) -> None:
        """Schedule the pod's worker (coalescing: a running worker just goes round once more)."""
        if pod.task is not None and not pod.task.done():
            pod.dirty = True
            return
        pod.task = asyncio.create_task(self._work(pod), name=f"pod-{pod.uid}")

    def schedule(self, pod: PodState, delay: float | None) -> None:
        """Kick the pod after `delay` seconds (None: never); keeps the earliest pending timer."""
        if delay is None:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0)
        if pod.timer is not None and not pod.timer.cancelled() and pod.timer.when() <= when:
            return
        if pod.timer is not None:
            pod.timer.cancel()
        pod.timer = loop.call_at(when, self._timer_fired, pod)

    def _timer_fired(self, pod: PodState) -> None:
        pod.timer = None
        if self.table.is_current(pod):
            self.kick(pod)

    async def stop(self) -> None:
        """Cancel every worker and timer (the pods keep running in Docker)."""
        tasks = [p.task for p in self.table if p.task is not None]
        for pod in self.table:
            if pod.timer is not None:
                pod.timer.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.prober.close()

    # ---------------------------------------------------------------- a round

    async def _work(self, pod: PodState) -> None:
        ctx = pod_context(pod.namespace, pod.name, pod.uid)
        while True:
            pod.dirty = False
            if not self.table.is_current(pod):
                return
            try:
                async with pod.lock:
                    if not self.table.is_current(pod):
                        return  # deleted while this worker waited for the lock
                    await self.refresh(pod)
                    if not pod.deleting:
                        self.schedule(pod, await self._reconcile(pod))
                    self.publish(pod)
                    self.prober.sync(pod)
            except asyncio.CancelledError:
                raise
            except errors.Unavailable as exc:
                # The engine is gone; the resync after reconnecting kicks every pod again.
                log.warning("pod worker: engine unavailable", error=str(exc), **ctx)
                return
            except Exception:
                log.exception("pod worker failed; retrying in 5 s", **ctx)
                self.schedule(pod, RETRY_SECONDS)
                return
            if not pod.dirty:
                return

    async def refresh_locked(self, pod: PodState) -> None:
        async with pod.lock:
            await self.refresh(pod)

    async def refresh(self, pod: PodState) -> None:
        """Inspect the containers an event (or a resync) marked stale; the caller holds the lock."""
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
                pod.forget(cid)
            elif isinstance(result, BaseException):
                raise result
            else:
                pod.apply(result)
                pod.inspected[cid] = sent
        await termination.collect(self.engine, pod)

    async def refresh_infra(self, pod: PodState) -> dict[str, Any]:
        """Inspect the infra container now (the set-up, right after starting it); returns what the
        engine said."""
        assert pod.infra_id is not None
        sent = time.time()
        data = await self.engine.inspect_container(pod.infra_id)
        pod.apply(data)
        pod.inspected[pod.infra_id] = sent
        return data

    def publish(self, pod: PodState) -> None:
        """Compute the status; publish it when it changed (never after the pod's DELETED)."""
        if not self.table.is_current(pod):
            return
        current = status.compute(pod, utcnow(), self.settings.restart)
        if pod.deleting and status.main_done(pod):
            current.phase = status.final_phase(current)
        previous = pod.status
        if previous is not None and previous.model_copy(update={"version": 0}) == current:
            return
        pod.version = pod.next_version()
        current.version = pod.version
        pod.status = current
        self.hub.publish(wire.WatchEvent(type="STATUS", pod=current))

    def status_of(self, pod: PodState) -> wire.PodStatus:
        """The pod's last status (computed now when none was published yet)."""
        if pod.status is None:
            self.publish(pod)
        assert pod.status is not None
        return pod.status
