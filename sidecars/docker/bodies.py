"""Docker create bodies for a pod's infra container and for its containers (pure functions).

Kubernetes semantics, as the kubelet gives them:
- one network and IPC namespace per pod, held by the infra container (the containers join it
  with `container:<infra>`); the PID namespace too with shareProcessNamespace; the pod's hostname
  (hostname or name) and hostAliases on the infra container, which the containers share;
- argv from command/args and the image's ENTRYPOINT/CMD (`commands.resolve_argv`);
- env (resolved by the virtual kubelet; the last of duplicate names wins), workingDir, tty/stdin;
- resources: memory limit (no swap) and request, CPU limit as CFS quota, CPU request as shares
  (2 for none, like the kubelet), nvidia.com/gpu as a device request; a container without a
  memory or CPU limit gets the desktop's default (`ceilings.py`), every container the process
  limit;
- the pod and container security contexts: runAsUser/runAsGroup/runAsNonRoot, supplemental
  groups and fsGroup, capabilities, read-only root file system.

The desktop's hardening, which only a named policy setting loosens: every capability dropped but
the kept set (`settings.KEPT_CAPABILITIES`, minus what the pod drops, plus allowed adds),
no-new-privileges, Docker's default seccomp and AppArmor profiles and masked /proc paths; a pod
that mounts host paths never runs as uid 0; `NVIDIA_*` variables (which make the NVIDIA runtime
hand out GPUs) only reach a container that was granted GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kod import labels as kl
from kod import quantity, wire
from sidecars.docker import naming
from sidecars.docker.ceilings import Ceilings
from sidecars.docker.commands import resolve_argv
from sidecars.docker.policy import GPU_RESOURCE, host_path_volumes
from sidecars.docker.record import PodRecord
from sidecars.docker.settings import KEPT_CAPABILITIES, DockerSidecarSettings, PolicySettings, normalize_capability
from sidecars.docker.volumes import ContainerMounts

#: Kubernetes' minimum CPU shares (containers without a CPU request).
MIN_SHARES = 2


class ConfigError(Exception):
    """The container cannot be created as specified (Kubernetes' CreateContainerConfigError)."""

    reason = "CreateContainerConfigError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    """What the sidecar needs from `docker image inspect`."""

    id: str
    entrypoint: list[str] | None
    cmd: list[str] | None
    user: str

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> ImageInfo:
        config = data.get("Config") or {}
        return cls(
            id=str(data.get("Id", "")),
            entrypoint=config.get("Entrypoint"),
            cmd=config.get("Cmd"),
            user=str(config.get("User") or ""),
        )


def pod_hostname(pod: wire.Pod) -> str:
    """spec.hostname, else the pod name cut to 63 characters (as the kubelet does)."""
    name = pod.spec.hostname or pod.metadata.name
    return name[:63].rstrip("-.") or "pod"


def infra_body(
    record: PodRecord,
    settings: DockerSidecarSettings,
    *,
    mounts: list[dict[str, Any]],
    created: datetime,
    network: str,
) -> dict[str, Any]:
    """The infra container: the pod's namespaces (on the pods' own network, `network`), its
    private volumes, and its record."""
    pod = record.pod
    labels = naming.pod_labels(settings.name, pod.metadata.namespace, pod.metadata.name, pod.metadata.uid, pod.metadata.labels)
    labels[naming.ROLE] = "infra"
    labels[naming.RECORD] = record.dump()
    labels[naming.CREATED] = created.isoformat()
    extra_hosts = []
    for alias in pod.spec.hostAliases or []:
        ip = alias.get("ip")
        for host in alias.get("hostnames") or []:
            extra_hosts.append(f"{host}:{ip}")
    return {
        "Image": settings.infra_image,
        "Hostname": pod_hostname(pod),
        "Labels": labels,
        "HostConfig": {
            "NetworkMode": network,
            "IpcMode": "shareable",
            "ShmSize": quantity.to_bytes(settings.shm_size),
            "Mounts": mounts,
            "ExtraHosts": extra_hosts or None,
            "SecurityOpt": ["no-new-privileges:true"],
            "CapDrop": ["ALL"],
            "RestartPolicy": {"Name": "no"},
            "LogConfig": {"Type": "none", "Config": {}},
        },
    }


#: Variables the NVIDIA container runtime reads to hand GPUs and driver capabilities to a
#: container (NVIDIA_VISIBLE_DEVICES=all gives every GPU): only containers granted GPUs get them.
NVIDIA_PREFIX = "NVIDIA_"


def merged_env(resolved: wire.ResolvedContainer | None, *, gpus: bool = True) -> list[str]:
    """NAME=value pairs; for duplicate names the last one wins, in the position of the first.
    Without `gpus`, `NVIDIA_*` variables are left out."""
    if resolved is None:
        return []
    values: dict[str, str] = {}
    for var in resolved.env:
        if not gpus and var.name.startswith(NVIDIA_PREFIX):
            continue
        values[var.name] = var.value
    return [f"{k}={v}" for k, v in values.items()]


def _user(pod: wire.Pod, c: wire.Container, image: ImageInfo) -> tuple[str, int | None, str]:
    """(Docker User string or "", effective numeric uid or None, image user)."""
    psc = pod.spec.securityContext
    sc = c.securityContext
    uid = sc.runAsUser if sc and sc.runAsUser is not None else (psc.runAsUser if psc else None)
    gid = sc.runAsGroup if sc and sc.runAsGroup is not None else (psc.runAsGroup if psc else None)
    image_user = image.user.split(":", 1)[0]
    if uid is None and gid is None:
        return "", (int(image_user) if image_user.isdigit() else (0 if not image_user else None)), image_user
    user_part = str(uid) if uid is not None else (image_user or "0")
    effective = uid if uid is not None else (int(image_user) if image_user.isdigit() else (0 if not image_user else None))
    return (f"{user_part}:{gid}" if gid is not None else user_part), effective, image_user


def _check_non_root(pod: wire.Pod, c: wire.Container, effective: int | None, image_user: str, explicit: bool) -> None:
    psc = pod.spec.securityContext
    sc = c.securityContext
    non_root = sc.runAsNonRoot if sc and sc.runAsNonRoot is not None else (psc.runAsNonRoot if psc else None)
    if not non_root:
        return
    who = f'(pod: "{pod.metadata.name}_{pod.metadata.namespace}({pod.metadata.uid})", container: {c.name})'
    if effective is None:
        raise ConfigError(f"container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root {who}")
    if effective == 0:
        if explicit:
            raise ConfigError(f"container's runAsUser breaks non-root policy {who}")
        raise ConfigError(f"container has runAsNonRoot and image will run as root {who}")


def _resources(c: wire.Container, policy_gpus: bool, ceilings: Ceilings) -> dict[str, Any]:
    limits = c.resources.limits
    requests = c.resources.requests
    memory, cpu = ceilings.limits_of(c)
    out: dict[str, Any] = {
        "Memory": memory,
        "MemorySwap": memory,  # no swap, as on a kubelet
        "NanoCpus": cpu * 1_000_000,
        "PidsLimit": ceilings.pids,
    }
    if "memory" in requests:
        reservation = quantity.to_bytes(requests["memory"])
        if 0 < reservation <= memory:
            out["MemoryReservation"] = reservation
    cpu_request = requests.get("cpu", limits.get("cpu"))
    millis = quantity.to_millicores(cpu_request) if cpu_request is not None else 0
    out["CpuShares"] = max(MIN_SHARES, millis * 1024 // 1000)
    gpus = limits.get(GPU_RESOURCE, requests.get(GPU_RESOURCE))
    if gpus is not None and policy_gpus:
        count = int(quantity.parse(gpus))
        if count > 0:
            out["DeviceRequests"] = [{"Driver": "nvidia", "Count": count, "Capabilities": [["gpu"]]}]
    return out


def container_body(
    record: PodRecord,
    c: wire.Container,
    *,
    role: str,
    attempt: int,
    infra_id: str,
    image: ImageInfo,
    mounts: ContainerMounts,
    settings: DockerSidecarSettings,
    ceilings: Ceilings,
) -> dict[str, Any]:
    """The create body of container `c` (attempt `attempt`). Raises ConfigError when the pod's
    settings cannot be honoured (runAsNonRoot against a root image, a root container in a pod
    with host paths, nothing to run)."""
    pod = record.pod
    resolved = record.resolved(c.name)
    command = resolved.command if resolved and resolved.command is not None else c.command
    args = resolved.args if resolved and resolved.args is not None else c.args
    argv = resolve_argv(image.entrypoint, image.cmd, command, args)
    if not argv:
        raise ConfigError(f"no command specified: neither the pod nor the image {c.image} gives one")
    user, effective, image_user = _user(pod, c, image)
    explicit = bool((c.securityContext and c.securityContext.runAsUser is not None)
                    or (pod.spec.securityContext and pod.spec.securityContext.runAsUser is not None))
    _check_non_root(pod, c, effective, image_user, explicit)
    if host_path_volumes(pod.spec) and not settings.policy.allow_root_with_host_paths:
        _check_not_root_with_host_paths(c, effective, image_user)

    labels = naming.pod_labels(settings.name, pod.metadata.namespace, pod.metadata.name, pod.metadata.uid, pod.metadata.labels)
    labels[naming.ROLE] = role
    labels[naming.ATTEMPT] = str(attempt)
    labels[kl.D_CONTAINER] = c.name

    psc = pod.spec.securityContext
    groups = [str(g) for g in (psc.supplementalGroups or [])] if psc else []
    if psc and psc.fsGroup is not None and str(psc.fsGroup) not in groups:
        groups.append(str(psc.fsGroup))
    sc = c.securityContext
    resources = _resources(c, settings.policy.allow_gpus, ceilings)

    host_config: dict[str, Any] = {
        "NetworkMode": f"container:{infra_id}",
        "IpcMode": f"container:{infra_id}",
        "Mounts": mounts.mounts,
        "Devices": mounts.devices,
        "SecurityOpt": security_options(sc, settings.policy, psc),
        # Everything dropped, then the kept set (and what the pod may add) given back: the
        # container gets exactly `capabilities(...)`, whatever the engine's default set is.
        "CapDrop": ["ALL"],
        "CapAdd": capabilities(sc) or None,
        "GroupAdd": groups or None,
        "ReadonlyRootfs": bool(sc and sc.readOnlyRootFilesystem),
        "RestartPolicy": {"Name": "no"},
        "LogConfig": {
            "Type": "json-file",
            "Config": {"max-size": settings.log_max_size, "max-file": str(settings.log_max_files)},
        },
    }
    if sc and sc.procMount == "Unmasked" and settings.policy.allow_unmasked_proc_mount:
        host_config["MaskedPaths"] = []
        host_config["ReadonlyPaths"] = []
    if pod.spec.shareProcessNamespace:
        host_config["PidMode"] = f"container:{infra_id}"
    host_config.update(resources)
    return {
        "Image": c.image,
        "Entrypoint": argv,
        "Cmd": [],
        "Env": merged_env(resolved, gpus="DeviceRequests" in resources),
        "WorkingDir": c.workingDir or "",
        "User": user,
        "Tty": bool(c.tty),
        "OpenStdin": bool(c.stdin),
        "AttachStdin": False,
        "Labels": labels,
        "HostConfig": host_config,
    }


def capabilities(sc: wire.SecurityContext | None) -> list[str]:
    """The capabilities a container runs with: the kept set, minus what it drops ("ALL": all of
    them), plus what it adds (the policy has refused adds it does not allow), as CRI runtimes
    apply add and drop."""
    caps = sc.capabilities if sc else None
    add = {normalize_capability(x) for x in (caps.add or [])} if caps else set()
    drop = {normalize_capability(x) for x in (caps.drop or [])} if caps else set()
    kept = set() if "ALL" in drop else set(KEPT_CAPABILITIES) - drop
    return sorted(kept | (add - {"ALL"}))


def security_options(
    sc: wire.SecurityContext | None, policy: PolicySettings, psc: wire.PodSecurityContext | None = None
) -> list[str]:
    """Docker's SecurityOpt: no-new-privileges unless the container asks for privilege
    escalation and the policy allows it; Docker's default seccomp and AppArmor profiles (no
    option) unless the container asks for Unconfined and the policy allows that."""
    out = []
    if not (sc and sc.allowPrivilegeEscalation and policy.allow_privilege_escalation):
        out.append("no-new-privileges:true")
    profile = sc.seccompProfile if sc and sc.seccompProfile else (psc.seccompProfile if psc else None)
    seccomp = (profile or {}).get("type")
    if seccomp == "Unconfined" and policy.allow_unconfined_seccomp:
        out.append("seccomp=unconfined")
    apparmor = (sc.appArmorProfile or {}).get("type") if sc else None
    if apparmor == "Unconfined" and policy.allow_unconfined_apparmor:
        out.append("apparmor=unconfined")
    return out


def _check_not_root_with_host_paths(c: wire.Container, effective: int | None, image_user: str) -> None:
    """A pod that mounts host paths runs as a non-root uid; the policy refuses an explicit
    runAsUser 0, this the image's root user (or one that cannot be told)."""
    if effective == 0:
        raise ConfigError(
            f"container {c.name} would run as root (the image's user), but its pod mounts host paths, which the "
            "desktop gives only to non-root containers: set securityContext.runAsUser to a non-zero uid"
        )
    if effective is None:
        raise ConfigError(
            f"container {c.name}: the image's user {image_user!r} is not numeric, so it cannot be verified to be "
            "non-root, which a pod that mounts host paths must be: set securityContext.runAsUser"
        )
