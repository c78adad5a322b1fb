"""PersistentVolumeClaims as Docker volumes: made only for claims that exist, gone once they do not.

    volume, mountpoint, made = await claims.ensure(pod, "home")   # in a pod's set-up
    await claims.collect()                                         # after deletes and resyncs

A claim's data lives in the Docker volume `kod-pvc_<ns>_<claim>_<claim uid>`, shared by every pod
of this sidecar that mounts the claim and kept when those pods are deleted, so a pod of the next
session finds what the previous one wrote. Contracts:
- A volume is made only for a claim the virtual kubelet confirmed, with its uid, in the create
  request (`PodCreateRequest.claims`): a pod naming a claim that does not exist never makes
  storage on the desktop (the create is refused with 400 when the request does not confirm it).
- A claim deleted and made again is another claim (another uid): it gets a new, empty volume,
  and the volume of the claim that no longer exists is removed, but only once no container uses
  it (the engine refuses to remove a volume a container references, running or not; such a
  volume is tried again after the next pod delete or resync).
- The current volume of a claim is the last one made for its name (a label records when, to the
  nanosecond); volumes of earlier versions of this sidecar (no claim uid) are never touched.
- A claim deleted for good, and not made again, leaves its volume: the sidecar hears of claims
  only through pods (docs/docker-sidecar.md says how to remove such a volume).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from kod import errors
from kod import labels as kl
from kod.log import get_logger
from sidecars.docker import naming
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.state import PodState
from sidecars.docker.table import PodTable
from sidecars.docker.tasks import Background

log = get_logger(__name__)


class ClaimVolumes:
    """The claim volumes of one sidecar."""

    def __init__(self, settings: DockerSidecarSettings, engine: Engine, table: PodTable, background: Background) -> None:
        self.settings = settings
        self.engine = engine
        self.table = table
        self.background = background

    def collect_later(self) -> None:
        """Run `collect` in the background (after a claim volume was made or a pod deleted)."""
        self.background.spawn(self.collect(), "claims-collect")

    async def ensure(self, pod: PodState, claim: str) -> tuple[str, str, bool]:
        """(volume name, host mount point, made now) of `claim` for `pod`, whose record says
        the claim's uid. Raises InvalidInput when the virtual kubelet did not confirm it."""
        uid = pod.record.claim_uid(claim)
        if uid is None:
            raise errors.InvalidInput(f"claim {claim!r} was not confirmed to exist by the virtual kubelet")
        name = naming.pvc_volume_name(pod.namespace, claim, uid)
        try:
            result = await self.engine.inspect_volume(name)
            made = False
        except EngineError as exc:
            if not exc.not_found:
                raise
            labels = {
                **naming.base_labels(self.settings.name),
                naming.ROLE: "pvc",
                kl.D_POD_NAMESPACE: pod.namespace,
                naming.PVC_CLAIM: claim,
                naming.PVC_CLAIM_UID: uid,
                naming.PVC_CREATED: str(time.time_ns()),
            }
            result = await self.engine.create_volume(name, labels)
            made = True
        return name, str(result["Mountpoint"]), made

    async def collect(self) -> list[str]:
        """Remove the volumes of claims that were replaced by a claim of the same name, unless a
        container still uses them; the names removed."""
        listed = await self.engine.volumes(naming.owner_filter(self.settings.name))
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for v in listed:
            labels = v.get("Labels") or {}
            if labels.get(naming.ROLE) == "pvc" and labels.get(naming.PVC_CLAIM_UID):
                groups[(labels.get(kl.D_POD_NAMESPACE, ""), labels.get(naming.PVC_CLAIM, ""))].append(v)
        in_table = {name for pod in self.table for name, _ in pod.locations.pvcs.values()}
        removed = []
        for (namespace, claim), vols in groups.items():
            vols.sort(key=_made_at)
            for v in vols[:-1]:
                if v["Name"] in in_table:
                    continue
                try:
                    await self.engine.remove_volume(v["Name"], force=False)
                except EngineError as exc:
                    if exc.conflict:  # a container (running or not) still uses it
                        continue
                    raise
                removed.append(v["Name"])
                log.info("removed the volume of a claim that no longer exists", pod_namespace=namespace, claim=claim,
                         claim_uid=(v.get("Labels") or {}).get(naming.PVC_CLAIM_UID), volume=v["Name"])
        return removed


def _made_at(volume: dict[str, Any]) -> int:
    try:
        return int((volume.get("Labels") or {}).get(naming.PVC_CREATED, "0"))
    except ValueError:
        return 0
