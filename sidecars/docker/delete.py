"""Deletion: stopping a pod's containers and removing every Docker object of it.

    final = await deleter.delete("default", "web", uid=None, grace=None)

Contracts:
- A delete stops the containers (`stop.py`: the stop signal, SIGKILL after the grace period),
  then removes the containers, the infra container, the private volumes and the pod's staging
  mounts; PVC volumes stay (but for a replaced claim's, see `claims.py`).
  It answers with the final status (Succeeded when every container exited 0, else Failed),
  published as DELETED; no STATUS of the pod follows it.
- It may be called more than once: a call during a delete waits for the same answer, and one
  with a shorter grace period shortens it (SIGKILL now). NotFound when the pod is gone.
- It survives a crash: the infra container is renamed `..._deleting` first, and a restarted
  sidecar that finds such a name finishes the delete (`adoption.py`).
- A failed delete (the engine away) leaves the pod in the table, marked deleting; a later call
  tries again.
- `remove_uid_objects` removes whatever carries a pod's uid label, for objects a crashed
  predecessor (or a crashed create) made without recording them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kod import labels as kl
from kod import wire
from kod.hub import Hub
from kod.log import get_logger, pod_context
from sidecars.docker import naming, status, volumes
from sidecars.docker.claims import ClaimVolumes
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.mounter import Mounter
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.state import PodState, utcnow
from sidecars.docker.stop import grace_period, stop_containers
from sidecars.docker.table import PodTable
from sidecars.docker.tasks import Background
from sidecars.docker.worker import Worker

log = get_logger(__name__)


async def remove_objects(engine: Engine, pod: PodState) -> None:
    """Remove the pod's containers and private volumes (not PVC volumes); idempotent."""
    ids = [r.id for r in pod.runs()]
    if pod.infra_id is not None:
        ids.append(pod.infra_id)
    await asyncio.gather(*(engine.remove_container(i) for i in ids))
    names = {area[0] for area in (pod.locations.mem, pod.locations.disk) if area is not None}
    names |= {naming.volume_name(pod.namespace, pod.name, pod.uid, k) for k in volumes.areas(pod.planned)}
    await asyncio.gather(*(engine.remove_volume(n) for n in names))


async def remove_uid_objects(engine: Engine, sidecar: str, uid: str) -> None:
    """Remove every container and private volume of this sidecar labelled with pod `uid`. What
    cannot be removed now is logged and left for the next resync (which removes objects whose
    pod is gone)."""
    flt = [*naming.owner_filter(sidecar), f"{kl.D_POD_UID}={uid}"]
    cs, vs = await asyncio.gather(engine.containers(flt), engine.volumes(flt))
    results = await asyncio.gather(*(engine.remove_container(c["Id"]) for c in cs), return_exceptions=True)
    results += await asyncio.gather(
        *(engine.remove_volume(v["Name"]) for v in vs if (v.get("Labels") or {}).get(naming.ROLE) == "volume"),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            log.warning("could not remove a Docker object of a pod", pod_uid=uid, error=str(result))


class Deleter:
    """Deletes pods of the table."""

    def __init__(
        self,
        settings: DockerSidecarSettings,
        engine: Engine,
        table: PodTable,
        hub: Hub,
        worker: Worker,
        background: Background,
        wait_ready: Callable[[], Awaitable[None]],
        mounter: Mounter,
        claims: ClaimVolumes,
    ) -> None:
        self.settings = settings
        self.mounter = mounter
        self.claims = claims
        self.engine = engine
        self.table = table
        self.hub = hub
        self.worker = worker
        self.background = background
        self._wait_ready = wait_ready

    async def delete(self, namespace: str, name: str, *, uid: str | None, grace: int | None) -> wire.PodStatus:
        """Stop the pod's containers (the stop signal, then SIGKILL after `grace` seconds; None:
        the pod's terminationGracePeriodSeconds) and remove all its objects but PVC volumes.
        May be called more than once: a later call with a shorter grace period shortens it, and
        every call returns the final status. NotFound when the pod is (already) gone."""
        await self._wait_ready()
        pod = self.table.lookup(namespace, name, uid)
        grace = grace_period(pod, self.settings.default_grace_period_seconds) if grace is None else grace
        if pod.deletion is not None:
            if pod.grace is not None and grace < pod.grace:
                pod.grace = grace
                # The running delete waits in its stop: kill now, beside it.
                self.background.spawn(stop_containers(self.engine, pod, 0), f"kill-{pod.uid}")
            return await asyncio.shield(pod.deletion)
        pod.deletion = asyncio.get_running_loop().create_future()
        pod.grace = grace
        self.background.spawn(self._delete(pod, grace), f"delete-{pod.uid}")
        return await asyncio.shield(pod.deletion)

    def resume(self, pod: PodState) -> None:
        """Finish a delete an earlier process started (its infra container is `..._deleting`)."""
        log.info("resuming an interrupted delete", **pod_context(pod.namespace, pod.name, pod.uid))
        self.background.spawn(self.delete(pod.namespace, pod.name, uid=pod.uid, grace=0), f"delete-{pod.uid}")

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
                await self.worker.refresh(pod)
                # A second delete may have shortened the grace period meanwhile.
                grace = pod.grace if pod.grace is not None else grace
                _, stopped = await asyncio.gather(self._mark_deleting(pod), stop_containers(self.engine, pod, grace))
                if stopped:
                    await self.worker.refresh(pod)
                final = status.compute(pod, utcnow(), self.settings.restart)
                final.phase = status.final_phase(final)
                final.version = pod.next_version()
                await remove_objects(self.engine, pod)
                await self.mounter.release(pod.uid)
                self.table.unregister(pod)
                self.worker.prober.forget(pod)
            # Objects a crashed predecessor created and never recorded: found by label, later.
            self.background.spawn(remove_uid_objects(self.engine, self.settings.name, pod.uid), f"sweep-{pod.uid}")
            if pod.locations.pvcs:
                self.claims.collect_later()  # a replaced claim's volume may be free now
            log.info("pod deleted", grace=grace, phase=final.phase, **ctx)
            self.hub.publish(wire.WatchEvent(type="DELETED", pod=final))
            future.set_result(final)
        except BaseException as exc:
            pod.deletion = None  # a later delete retries
            if isinstance(exc, EngineError):
                exc = exc.as_kod_error("deleting the pod")
            if not future.done():
                future.set_exception(exc)
            # Retrieve it here so an unawaited failure is not reported as "never retrieved".
            future.exception()
            log.warning("pod delete failed", error=str(exc), **ctx)

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
