"""The desktop policy: what a pod may ask of the user's machine.

A pod runs next to the user's screen, speakers and files, so the node admits much less than a
cluster node: no privileged containers, no host namespaces or host ports, no capabilities beyond
Docker's default set (plus an allow-list), host paths and devices only from allow-lists, no
sysctls, no unmasked /proc, no unconfined seccomp or AppArmor, no raw block devices. Everything
the pod asks for that is not allowed is reported at once, each with the offending field, so one
round of fixes is enough.

`check(pod, policy)` is pure; the create handler turns its violations into a 403 `Forbidden` and
creates nothing.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kod import wire
from sidecars.docker.settings import DOCKER_DEFAULT_CAPABILITIES, PolicySettings, normalize_capability

GPU_RESOURCE = "nvidia.com/gpu"
#: Resources a container may list without the policy refusing it.
_KNOWN_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", GPU_RESOURCE})


@dataclass(frozen=True)
class Violation:
    """One thing the policy refuses: the field (Kubernetes path notation) and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def normalize_host_path(path: str) -> str:
    """'/tmp//.X11-unix/../.X11-unix/' -> '/tmp/.X11-unix' (lexically; the sidecar may not see
    the host's file system, so symlinks cannot be resolved here)."""
    return posixpath.normpath(path) if path else path


def _under(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


def device_allowed(path: str, policy: PolicySettings) -> bool:
    """True when `path` is an allow-listed device (or below an allow-listed device directory)."""
    for pattern in policy.allowed_devices:
        if fnmatch.fnmatchcase(path, pattern):
            return True
        if not any(ch in pattern for ch in "*?[") and _under(path, pattern.rstrip("/")):
            return True
    return False


def host_path_access(path: str, policy: PolicySettings) -> str | None:
    """'rw' or 'ro' when hostPath `path` may be mounted (as a directory or file), else None."""
    if any(_under(path, root) for root in policy.allowed_host_paths):
        return "rw"
    if any(_under(path, root) for root in policy.read_only_host_paths):
        return "ro"
    return None


def is_device_volume(volume: wire.Volume, policy: PolicySettings) -> bool:
    """A hostPath volume that maps devices rather than mounting files."""
    if volume.hostPath is None:
        return False
    return device_allowed(normalize_host_path(volume.hostPath.path), policy)


def _profile_type(profile: dict[str, Any] | None) -> str | None:
    if not profile:
        return None
    value = profile.get("type")
    return str(value) if value is not None else None


def check(pod: wire.Pod, policy: PolicySettings) -> list[Violation]:
    """Every way `pod` breaks the desktop policy (empty: the pod is admitted)."""
    return list(_violations(pod, policy))


def _violations(pod: wire.Pod, policy: PolicySettings) -> Iterator[Violation]:
    spec = pod.spec
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if getattr(spec, flag):
            yield Violation(f"spec.{flag}", "host namespaces are not allowed on the desktop node")
    if spec.hostUsers is False:
        yield Violation("spec.hostUsers", "user namespaces (hostUsers: false) are not supported by the Docker sidecar")
    psc = spec.securityContext
    if psc is not None:
        if psc.sysctls:
            yield Violation("spec.securityContext.sysctls", "sysctls are not allowed on the desktop node")
        yield from _seccomp("spec.securityContext.seccompProfile", psc.seccompProfile)

    host_volumes = {v.name for v in spec.volumes if v.hostPath is not None}
    mounted_rw: dict[str, list[str]] = {}
    for kind, containers in (("initContainers", spec.initContainers), ("containers", spec.containers)):
        for i, c in enumerate(containers):
            where = f"spec.{kind}[{i}]"
            yield from _container(where, c, policy)
            for j, m in enumerate(c.volumeMounts):
                if not m.readOnly:
                    mounted_rw.setdefault(m.name, []).append(f"{where}.volumeMounts[{j}]")
                if m.subPath and m.name in host_volumes:
                    yield Violation(
                        f"{where}.volumeMounts[{j}].subPath",
                        "subPath is not supported on hostPath volumes; mount the allowed path itself",
                    )

    for i, v in enumerate(spec.volumes):
        yield from _volume(f"spec.volumes[{i}]", v, policy, mounted_rw.get(v.name, []))


def _seccomp(where: str, profile: dict[str, Any] | None) -> Iterator[Violation]:
    kind = _profile_type(profile)
    if kind == "Unconfined":
        yield Violation(f"{where}.type", "unconfined seccomp is not allowed on the desktop node")
    elif kind == "Localhost":
        yield Violation(f"{where}.type", "Localhost seccomp profiles are not supported; use RuntimeDefault")


def _container(where: str, c: wire.Container, policy: PolicySettings) -> Iterator[Violation]:
    sc = c.securityContext
    if sc is not None:
        if sc.privileged:
            yield Violation(f"{where}.securityContext.privileged", "privileged containers are not allowed on the desktop node")
        if sc.capabilities and sc.capabilities.add:
            allowed = set(DOCKER_DEFAULT_CAPABILITIES) | set(policy.allowed_capabilities)
            extra = sorted({normalize_capability(cap) for cap in sc.capabilities.add} - allowed)
            if extra:
                yield Violation(
                    f"{where}.securityContext.capabilities.add",
                    f"capabilities {', '.join(extra)} are not allowed (allowed beyond Docker's default set: "
                    f"{', '.join(policy.allowed_capabilities) or 'none'})",
                )
        if sc.allowPrivilegeEscalation and not policy.allow_privilege_escalation:
            yield Violation(
                f"{where}.securityContext.allowPrivilegeEscalation",
                "privilege escalation is not allowed: every container runs with no-new-privileges",
            )
        if sc.procMount not in (None, "", "Default"):
            yield Violation(f"{where}.securityContext.procMount", "an unmasked /proc is not allowed on the desktop node")
        yield from _seccomp(f"{where}.securityContext.seccompProfile", sc.seccompProfile)
        apparmor = _profile_type(sc.appArmorProfile)
        if apparmor == "Unconfined":
            yield Violation(f"{where}.securityContext.appArmorProfile.type", "unconfined AppArmor is not allowed")
        elif apparmor == "Localhost":
            yield Violation(f"{where}.securityContext.appArmorProfile.type", "Localhost AppArmor profiles are not supported")
    for j, port in enumerate(c.ports):
        if port.hostPort:
            yield Violation(f"{where}.ports[{j}].hostPort", "host ports are not allowed on the desktop node")
        if port.hostIP:
            yield Violation(f"{where}.ports[{j}].hostIP", "host ports are not allowed on the desktop node")
    if c.volumeDevices:
        yield Violation(f"{where}.volumeDevices", "raw block devices are not allowed on the desktop node")
    for j, m in enumerate(c.volumeMounts):
        if m.mountPropagation == "Bidirectional":
            yield Violation(
                f"{where}.volumeMounts[{j}].mountPropagation",
                "Bidirectional mount propagation needs a privileged container and is not allowed",
            )
    for section in ("limits", "requests"):
        for name in getattr(c.resources, section):
            if name == GPU_RESOURCE and not policy.allow_gpus:
                yield Violation(f"{where}.resources.{section}[{name}]", "GPUs are not allowed on this desktop node")
            elif name.startswith("hugepages-"):
                yield Violation(f"{where}.resources.{section}[{name}]", "huge pages are not supported")


_SOURCES = ("emptyDir", "secret", "configMap", "projected", "downwardAPI", "persistentVolumeClaim", "hostPath")


def _volume(where: str, v: wire.Volume, policy: PolicySettings, rw_mounts: list[str]) -> Iterator[Violation]:
    kinds = [k for k in _SOURCES if getattr(v, k) is not None]
    if not kinds:
        yield Violation(
            where,
            f"volume {v.name!r} is of a kind the desktop node does not support (supported: {', '.join(_SOURCES)})",
        )
        return
    if v.hostPath is None:
        return
    path = normalize_host_path(v.hostPath.path)
    if not path.startswith("/"):
        yield Violation(f"{where}.hostPath.path", f"host path {v.hostPath.path!r} must be absolute")
        return
    if device_allowed(path, policy):
        return
    if v.hostPath.type in ("CharDevice", "BlockDevice"):
        yield Violation(
            f"{where}.hostPath.path",
            f"device {path} is not in the allowed devices ({', '.join(policy.allowed_devices) or 'none'})",
        )
        return
    access = host_path_access(path, policy)
    if access is None:
        allowed = policy.allowed_host_paths + policy.read_only_host_paths
        yield Violation(
            f"{where}.hostPath.path",
            f"host path {path} is not in the allowed host paths ({', '.join(allowed) or 'none'})",
        )
    elif access == "ro" and rw_mounts:
        yield Violation(
            f"{rw_mounts[0]}.readOnly",
            f"host path {path} may only be mounted read-only",
        )
