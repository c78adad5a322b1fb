"""Resync and adoption: the pod table rebuilt from Docker after every (re)connection to the
engine, so that a restart of the sidecar or of dockerd never loses or duplicates anything.

    await adoption.resync()     # the event stream calls it right after subscribing

Contracts:
- Every infra container of this sidecar whose uid the table does not know is adopted from the
  pod record in its labels, with its volumes' locations from its mounts; the containers of every
  pod are marked stale and refreshed, so the first SYNC after a restart is right.
- A pod whose set-up never completed (its infra container was never started, or the marker that
  ends its volume contents is missing) is rolled back: its objects are removed and it is not
  adopted. Its create was never answered (the answer comes after the set-up), and the volume
  contents it needs (Secret and ConfigMap bytes) were held only in the crashed process's memory,
  so only the caller can finish it: the virtual kubelet, having no answer and no pod in
  InterLink's list, creates it again. Adopting it instead would leave it waiting for contents
  that nobody sends.
- A pod whose infra container is named `..._deleting` has its delete resumed.
- Every adopted pod is checked against the policy in force now (the settings may have changed
  while the sidecar was down): a pod it refuses is stopped and reported Failed, reason
  Forbidden, with the policy's message, exactly as if it had been refused at create.
- Volumes of claims that were replaced and that no container uses any more are removed
  (`claims.py`); other claim volumes are never removed here.
- Staging mounts of pods that no longer exist (a crash between a delete and its clean-up) are
  unmounted and removed.
- Objects of uids with no infra container (orphans, a crashed create's leftovers) are removed.
- Never waits for a pod's lock: a graceful delete may hold one for its whole grace period; such a
  pod refreshes when its holder is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kod import labels as kl
from kod.log import get_logger, pod_context
from sidecars.docker import naming, policy, volumes
from sidecars.docker.claims import ClaimVolumes
from sidecars.docker.delete import Deleter, remove_uid_objects
from sidecars.docker.engine import Engine
from sidecars.docker.mounter import Mounter
from sidecars.docker.record import PodRecord
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.state import PodState
from sidecars.docker.table import PodTable
from sidecars.docker.worker import Worker

log = get_logger(__name__)


class Adoption:
    """Rebuilds the pod table from the engine."""

    def __init__(
        self,
        settings: DockerSidecarSettings,
        engine: Engine,
        table: PodTable,
        worker: Worker,
        deleter: Deleter,
        rules: Callable[[], policy.Rules],
        mounter: Mounter,
        claims: ClaimVolumes,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.table = table
        self.worker = worker
        self.deleter = deleter
        self._rules = rules
        self.mounter = mounter
        self.claims = claims

    async def resync(self) -> None:
        """Rebuild the pod table from the engine: adopt pods, roll back unfinished set-ups, drop
        orphans, refresh states, resume deletes."""
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
        unknown = [c for uid, c in infras.items() if uid not in self.table]
        adopted = [p for p in await asyncio.gather(*(self._adopt(c) for c in unknown)) if p is not None]
        known = self.table.uids()
        orphans = [c for uid, cs in by_uid.items() if uid not in known for c in cs]
        for pod in self.table:
            if pod.infra_id is not None:
                pod.stale.add(pod.infra_id)
            if pod.uid in infras:
                pod.stale.add(infras[pod.uid]["Id"])
            pod.stale.update(r.id for r in pod.runs())
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
        await self.mounter.collect(known)
        self.claims.collect_later()
        # Refresh now what is free (on the first sync: everything, so the first SYNC is right);
        # a pod whose worker or delete holds its lock refreshes when that is done (kicked below).
        await asyncio.gather(*(self.worker.refresh_locked(p) for p in self.table if not p.lock.locked()))
        for pod in self.table:
            if pod.deleting and pod.deletion is None:
                self.deleter.resume(pod)
            else:
                self.worker.kick(pod)
        if adopted:
            log.info("adopted pods from Docker", pods=len(adopted))

    async def _adopt(self, infra: dict[str, Any]) -> PodState | None:
        """A PodState from an infra container found in Docker, registered in the table (None:
        unusable or unfinished, and removed)."""
        labels = infra.get("Labels") or {}
        uid = labels.get(kl.D_POD_UID, "")
        try:
            record = PodRecord.load(labels.get(naming.RECORD, ""))
            created = datetime.fromisoformat(labels.get(naming.CREATED, ""))
        except (ValidationError, ValueError) as exc:
            log.error("pod record unreadable; removing the pod's objects", pod_uid=uid, error=str(exc))
            await remove_uid_objects(self.engine, self.settings.name, uid)
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
        unfinished = None if pod.deleting else await self._unfinished_set_up(infra, planned)
        if unfinished is not None:
            log.info(
                "rolling back a create that a restart interrupted; its caller creates the pod again",
                reason=unfinished,
                **pod_context(pod.namespace, pod.name, uid),
            )
            await remove_uid_objects(self.engine, self.settings.name, uid)
            return None
        # A stopped infra container has an empty tmpfs: the pod finished (or its sandbox died),
        # which its status says; its contents are needed no more.
        pod.populated = True
        if not pod.deleting:
            violations = policy.check(record.pod, self._rules())
            if violations:
                pod.refused = (
                    f"pod {pod.namespace}/{pod.name} is refused by the desktop policy in force since the sidecar "
                    "restarted: " + "; ".join(str(v) for v in violations)
                )
                log.warning("adopted pod is refused by the current policy; stopping it", message=pod.refused,
                            **pod_context(pod.namespace, pod.name, uid))
        self.table.register(pod)
        return pod

    async def _unfinished_set_up(self, infra: dict[str, Any], planned: dict[str, volumes.PlannedVolume]) -> str | None:
        """Why the pod's set-up never completed, or None when it did (or cannot be told: its
        infra container stopped)."""
        state = infra.get("State")
        if state == "created":
            return "its infra container was never started"
        marker = volumes.marker_path(planned)
        if state == "running" and marker is not None and await self.engine.stat_path(infra["Id"], marker) is None:
            return "its volume contents were not completely written"
        return None
