"""Creation and set-up: accepting a pod and preparing everything its containers need.

    status, created = await creator.create(request)

A create admits the pod (structure: 400, desktop policy: 403, a name taken by another pod: 409),
records it in the table, and sets it up under its lock: the private volumes (and PVC volumes),
the infra container carrying the pod record in a label, its start, the volume contents (one
archive, marker last). Then the first round of its worker runs right here (the answer may already
say Running); later rounds come from events.

Contracts:
- Idempotent by uid: creating a uid that exists answers its status and starts nothing
  (`created` False). A name held by another uid is a Conflict unless that pod is being deleted.
- An answered create survives a crash of the sidecar: the answer comes only after the set-up
  completed, and a restarted sidecar adopts the pod from Docker (`adoption.py`).
- A create that fails or is cancelled (its caller went away) before its set-up completed is
  rolled back: what it made is removed, and only then does the uid leave the table, so a retry of
  the same uid waits for the rollback instead of racing with it; if a status of the pod was
  published meanwhile (a list during the set-up), a DELETED follows it. One cancelled after its
  set-up completed still finishes its first round (the containers' create and start), so that no
  container is started twice. Secret and ConfigMap bytes live in memory only until they are
  written into the pod's tmpfs.
- A pod in the table whose lock is free is set up; a set-up a crash interrupted is rolled back
  by the next process (`adoption.py`), whose caller, never answered, creates the pod again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from kod import errors, wire
from kod.hub import Hub
from kod.log import get_logger, pod_context
from sidecars.docker import bodies, naming, policy, validation, volumes
from sidecars.docker.claims import ClaimVolumes
from sidecars.docker.delete import remove_objects, remove_uid_objects
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.images import ImageCache
from sidecars.docker.network import PodNetwork
from sidecars.docker.reconcile import Reconciler
from sidecars.docker.record import PodRecord
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.state import PodState, utcnow
from sidecars.docker.table import PodTable
from sidecars.docker.worker import Worker

log = get_logger(__name__)


class Creator:
    """Creates pods into the table."""

    def __init__(
        self,
        settings: DockerSidecarSettings,
        engine: Engine,
        table: PodTable,
        images: ImageCache,
        hub: Hub,
        worker: Worker,
        reconciler: Reconciler,
        wait_ready: Callable[[], Awaitable[None]],
        rules: Callable[[], policy.Rules],
        claims: ClaimVolumes,
        network: PodNetwork,
    ) -> None:
        self.settings = settings
        self.network = network
        self.engine = engine
        self.table = table
        self.images = images
        self.hub = hub
        self.worker = worker
        self.reconciler = reconciler
        self._wait_ready = wait_ready
        self._rules = rules
        self.claims = claims

    async def create(self, request: wire.PodCreateRequest) -> tuple[wire.PodStatus, bool]:
        """Accept a pod: (status, True) when created now, (status, False) when the uid existed.
        Raises InvalidInput (400), Forbidden (403: the policy refused it; nothing is created),
        Conflict (409: another pod of that name exists) or Unavailable (503)."""
        validation.validate(request)
        meta = request.pod.metadata
        rules = self._rules()
        violations = policy.check(request.pod, rules)
        if violations:
            raise errors.Forbidden(
                f"pod {meta.namespace}/{meta.name} is refused by the desktop policy: "
                + "; ".join(str(v) for v in violations),
                hint="see docs/docker-sidecar.md for what the desktop node allows and how to change it",
            )
        await self._wait_ready()
        existing = self.table.get(meta.uid)
        if existing is not None:
            again = await self._create_again(existing)
            if again is not None:
                return again, False
            return await self.create(request)  # the first create failed and cleaned up meanwhile
        other = self.table.named(meta.namespace, meta.name)
        if other is not None and not other.deleting:
            raise errors.Conflict(
                f"pod {meta.namespace}/{meta.name} already runs here with uid {other.uid}; delete it first"
            )
        if await self.images.get(self.settings.infra_image) is None:
            raise errors.Unavailable(
                f"the pod infra image {self.settings.infra_image} is missing from the Docker engine",
                hint="build it with `python -m localenv images` (or set infra_image)",
            )
        record = PodRecord.from_request(request)
        pod = PodState.new(record, utcnow().replace(microsecond=0), volumes.plan(request.pod.spec, self.settings.policy))
        pod.contents = list(request.volumes)
        pod.memory_volume_size = volumes.memory_area_size(
            request.pod.spec, pod.planned, request.volumes, rules.ceilings, cap=self.settings.memory_volume_size
        )
        ctx = pod_context(meta.namespace, meta.name, meta.uid)
        self.table.register(pod)
        async with pod.lock:  # free: taken without a pause after registering
            try:
                self.worker.schedule(pod, await self._set_up(pod))
            except BaseException as exc:
                log.warning("pod set-up failed; removing what was created", error=str(exc), **ctx)
                try:
                    await asyncio.gather(remove_objects(self.engine, pod), return_exceptions=True)
                    await remove_uid_objects(self.engine, self.settings.name, pod.uid)
                    await self.reconciler.mounter.release(pod.uid)
                finally:
                    self.table.unregister(pod)
                    if pod.status is not None:
                        # A status of it went out (a list while it was being set up): say it is
                        # gone, or InterLink would go on listing a pod that does not exist, and
                        # the virtual kubelet would never create it again.
                        gone = pod.status.model_copy(update={"version": pod.next_version()})
                        self.hub.publish(wire.WatchEvent(type="DELETED", pod=gone))
                if isinstance(exc, EngineError):
                    raise exc.as_kod_error("setting up the pod") from exc
                raise
            # The pod exists from here on: its first round finishes even if the caller goes away
            # (InterLink gave up on a slow answer). Cut off inside a container start, the round
            # would leave the run recorded as never started, and the next round would start the
            # container again, which the engine does by running its exited process a second time.
            first = asyncio.ensure_future(self._first_round(pod, ctx))
            try:
                await asyncio.shield(first)
            except asyncio.CancelledError:
                await _finish(first)  # still under the lock, which the round needs
                log.info("pod created; its caller went away before the answer", pod_ip=pod.last_ip, **ctx)
                raise
        log.info("pod created", pod_ip=pod.last_ip, **ctx)
        assert pod.status is not None
        return pod.status, True

    async def _first_round(self, pod: PodState, ctx: dict[str, Any]) -> None:
        """The first round of the pod's worker, here (its lock held): everything is fresh, so the
        containers start without a detour through the event stream (the answer may already say
        Running). Later rounds are driven by events."""
        try:
            self.worker.schedule(pod, await self.reconciler.reconcile(pod))
            await self.worker.refresh(pod)
        except (EngineError, errors.Unavailable) as exc:
            log.warning("starting the pod's containers failed; retrying on the next event", error=str(exc), **ctx)
        finally:
            pod.dirty = True
            self.worker.kick(pod)
        self.worker.publish(pod)

    async def _create_again(self, pod: PodState) -> wire.PodStatus | None:
        """Create for a known uid: its status (it is set up once its lock is free). None when
        the pod vanished meanwhile (a concurrent first create failed and rolled back)."""
        if pod.deleting:
            raise errors.Conflict(f"pod {pod.namespace}/{pod.name} (uid {pod.uid}) is being deleted")
        async with pod.lock:
            if not self.table.is_current(pod):
                return None
            self.worker.publish(pod)
        assert pod.status is not None
        return pod.status

    async def _set_up(self, pod: PodState) -> float | None:
        """Volumes, the infra container (with the record), its start, the volume contents.
        Returns the back-off of a container create the engine refused (the fast path), if any."""
        meta = pod.record.pod.metadata
        labels = naming.pod_labels(self.settings.name, meta.namespace, meta.name, meta.uid, meta.labels)
        steps = []
        for area in volumes.areas(pod.planned):
            steps.append(self._create_area(pod, area, labels))
        new_claims: list[str] = []
        for claim in volumes.claims(pod.planned):
            steps.append(self._ensure_claim(pod, claim, new_claims))
        await asyncio.gather(*steps)
        await self.network.ensure()
        body = bodies.infra_body(
            pod.record, self.settings, mounts=volumes.infra_mounts(pod.locations), created=pod.created,
            network=self.network.name,
        )
        name = naming.infra_name(meta.namespace, meta.name, meta.uid)
        try:
            pod.infra_id = await self._create_infra(name, body)
        except EngineError as exc:
            if not exc.conflict:
                raise
            pod.infra_id = (await self.engine.inspect_container(name))["Id"]
        runs: list[Awaitable[float | None]] = []
        if not pod.spec.initContainers and not volumes.areas(pod.planned) and not volumes.claims(pod.planned):
            # Creating the containers then needs only the infra container's id: do it while the
            # engine starts the infra container (their start waits for it). With volumes, the
            # engine checks bind sources at create: those exist once the contents are written.
            runs = [self.reconciler.run(pod, slot, 0, start=False) for slot in pod.slots.values()]
        _, *delays = await asyncio.gather(self._start_infra(pod, new_claims), *runs)
        wanted = [d for d in delays if d is not None]
        return min(wanted) if wanted else None

    async def _create_infra(self, name: str, body: dict[str, object]) -> str:
        """Create the infra container; when the pods' network was removed meanwhile, re-create the
        network and try once more."""
        try:
            return await self.engine.create_container(name, body)
        except EngineError as exc:
            if not (exc.not_found and "network" in exc.message.lower()):
                raise
            log.warning("the pods' network was gone; creating it again", network=self.network.name)
            self.network.forget()
            await self.network.ensure(again=True)
            return await self.engine.create_container(name, body)

    async def _start_infra(self, pod: PodState, new_claims: list[str]) -> None:
        assert pod.infra_id is not None
        await self.engine.start_container(pod.infra_id)
        # Its port isolated and its address pinned before any container of the pod runs (from
        # the one inspect that the pod's status needs anyway).
        self.network.protect_pod(await self.worker.refresh_infra(pod))
        await self._populate(pod, new_claims=new_claims)

    async def _create_area(self, pod: PodState, area: str, labels: dict[str, str]) -> None:
        name = naming.volume_name(pod.namespace, pod.name, pod.uid, area)  # type: ignore[arg-type]
        vlabels = {**labels, naming.ROLE: "volume", naming.VOLUME_KIND: area}
        opts: dict[str, str] = {}
        if area == "mem":
            # Bounded (volumes.memory_area_size): tmpfs pages outlive the container that wrote
            # them, so a container's memory limit alone does not bound what its restarts keep.
            opts = {"type": "tmpfs", "device": "tmpfs", "o": f"mode=0700,nosuid,nodev,size={pod.memory_volume_size}"}
        result = await self.engine.create_volume(name, vlabels, opts)
        location = (name, str(result["Mountpoint"]))
        if area == "mem":
            pod.locations.mem = location
        else:
            pod.locations.disk = location

    async def _ensure_claim(self, pod: PodState, claim: str, new_claims: list[str]) -> None:
        name, mountpoint, made = await self.claims.ensure(pod, claim)
        if made:
            new_claims.append(claim)
            # A claim made again under its old name leaves the old claim's volume behind.
            self.claims.collect_later()
        pod.locations.pvcs[claim] = (name, mountpoint)

    async def _populate(self, pod: PodState, *, new_claims: Iterable[str]) -> None:
        """Write the private volumes' directories and contents (one archive, marker last)."""
        assert pod.infra_id is not None
        claims = list(new_claims)
        if volumes.marker_path(pod.planned) is not None or claims:
            tar = volumes.population_tar(pod.spec, pod.planned, pod.contents or [], new_claims=claims)
            await self.engine.put_archive(pod.infra_id, naming.INFRA_ROOT, tar)
        pod.populated = True
        pod.contents = None  # secrets live in the pod's tmpfs only from now on


async def _finish(task: asyncio.Future[None]) -> None:
    """Wait for `task` to end, through any number of cancellations of the caller (who then
    re-raises its own). Its outcome was logged by the task itself."""
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            continue
    if not task.cancelled():
        task.exception()  # retrieved: never "exception was never retrieved"
