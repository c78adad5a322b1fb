"""Names and labels of the Docker objects the sidecar creates.

Every object carries `io.kod.managed-by=kod-docker-sidecar` and `io.kod.sidecar=<name>` (so two
sidecars on one engine, e.g. a test run next to the desktop's own, never touch each other's
objects), plus the pod's namespace, name and uid. The state is reconstructible from these alone:

    infra container   kod_POD_<pod>_<ns>_<uid>            role=infra, the pod record (spec) label
                      ..._deleting once a delete started (a rename: the marker survives a crash)
    containers        kod_<container>_<pod>_<ns>_<uid>_<attempt>   role=init|main, attempt
    volumes           kod_<pod>_<ns>_<uid>_mem (tmpfs), kod_<pod>_<ns>_<uid>_disk   role=volume
    PVC volumes       kod-pvc_<ns>_<claim>_<claim uid>    role=pvc; outlive their pods (claims.py)

Names follow the dockershim convention (`k8s_<container>_<pod>_<ns>_<uid>_<attempt>`) so that
`docker ps` reads like a node.
"""

from __future__ import annotations

from typing import Literal

from kod import labels as kl

MANAGED_BY_VALUE = "kod-docker-sidecar"
SIDECAR = f"{kl.DOCKER_PREFIX}.sidecar"                  #: the sidecar's name (settings.name)
ROLE = f"{kl.DOCKER_PREFIX}.role"                        #: infra | init | main | volume | pvc
ATTEMPT = f"{kl.DOCKER_PREFIX}.container.attempt"        #: 0 for the first run, n after n restarts
RECORD = f"{kl.DOCKER_PREFIX}.pod.record"                #: JSON PodRecord (infra only)
CREATED = f"{kl.DOCKER_PREFIX}.pod.created"              #: RFC 3339 time the pod was accepted (infra only)
VOLUME_KIND = f"{kl.DOCKER_PREFIX}.volume.kind"          #: mem | disk (role=volume)
PVC_CLAIM = f"{kl.DOCKER_PREFIX}.pvc.claim"              #: claim name (role=pvc)
PVC_CLAIM_UID = f"{kl.DOCKER_PREFIX}.pvc.claim-uid"      #: claim uid (role=pvc)
PVC_CREATED = f"{kl.DOCKER_PREFIX}.pvc.created"          #: nanoseconds since the epoch it was made (role=pvc)
#: Pod label whose value is copied to D_SESSION, so a session's leftovers are found by label.
SESSION_POD_LABEL = kl.SESSION

Role = Literal["infra", "init", "main"]
VolumeKind = Literal["mem", "disk"]

DELETING_SUFFIX = "_deleting"
#: Where the infra container mounts the pod's private volumes (and PVCs); app containers never
#: see these paths, they get bind mounts of subdirectories.
INFRA_ROOT = "/kod"
INFRA_MEM = f"{INFRA_ROOT}/mem"
INFRA_DISK = f"{INFRA_ROOT}/disk"
INFRA_PVC = f"{INFRA_ROOT}/pvc"
#: File written last into a pod's private volume: its presence proves the contents are complete.
POPULATED_MARKER = ".kod-populated"


def infra_name(namespace: str, pod: str, uid: str) -> str:
    return f"kod_POD_{pod}_{namespace}_{uid}"


def container_name(namespace: str, pod: str, uid: str, container: str, attempt: int) -> str:
    return f"kod_{container}_{pod}_{namespace}_{uid}_{attempt}"


def volume_name(namespace: str, pod: str, uid: str, kind: VolumeKind) -> str:
    return f"kod_{pod}_{namespace}_{uid}_{kind}"


def pvc_volume_name(namespace: str, claim: str, claim_uid: str) -> str:
    """The named volume backing a PersistentVolumeClaim: one per claim (a claim deleted and made
    again has a new uid, and a new, empty volume), shared by every pod that mounts it and kept
    when the pods are deleted."""
    return f"kod-pvc_{namespace}_{claim}_{claim_uid}"


def base_labels(sidecar: str) -> dict[str, str]:
    """The labels every object of this sidecar carries."""
    return {kl.D_MANAGED_BY: MANAGED_BY_VALUE, SIDECAR: sidecar}


def pod_labels(sidecar: str, namespace: str, pod: str, uid: str, pod_meta_labels: dict[str, str]) -> dict[str, str]:
    """Labels of every per-pod object."""
    out = base_labels(sidecar)
    out.update({kl.D_POD_NAMESPACE: namespace, kl.D_POD_NAME: pod, kl.D_POD_UID: uid})
    session = pod_meta_labels.get(SESSION_POD_LABEL)
    if session:
        out[kl.D_SESSION] = session
    return out


def owner_filter(sidecar: str) -> list[str]:
    """Docker `label` filters selecting this sidecar's objects."""
    return [f"{kl.D_MANAGED_BY}={MANAGED_BY_VALUE}", f"{SIDECAR}={sidecar}"]


def is_deleting(docker_name: str) -> bool:
    """True for an infra container renamed when its pod's deletion started."""
    return docker_name.lstrip("/").endswith(DELETING_SUFFIX)
