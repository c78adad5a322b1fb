"""The desktop policy: what a pod may ask of the user's machine.

A pod runs next to the user's screen, speakers and files, so the node admits much less than a
cluster node: no privileged containers, no host namespaces or host ports, no capabilities beyond
the desktop's kept set (plus an allow-list), host paths only exactly as allow-listed (read-only
unless the entry is writable, never below an entry) and only where the sidecar can stage them,
containers of pods with host paths never as uid 0, no sysctls, no unmasked /proc, no unconfined
seccomp or AppArmor, no raw block devices, no limits above the ceilings. Everything the pod asks
for that is not allowed is reported at once, each with the offending field, so one round of fixes
is enough. Each `allow_*` setting (and each writable host path) loosens one rule explicitly.

`check(pod, rules)` is pure; the create handler turns its violations into a 403 `Forbidden` and
creates nothing, and adoption after a restart stops a pod the current rules refuse.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kod import wire
from sidecars.docker.ceilings import Ceilings
from sidecars.docker.hostfs import canonical
from sidecars.docker.settings import (
    KEPT_CAPABILITIES,
    DockerSidecarSettings,
    HostPathEntry,
    PolicySettings,
    normalize_capability,
)

GPU_RESOURCE = "nvidia.com/gpu"
#: Resources a container may list without the policy refusing it.
_KNOWN_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", GPU_RESOURCE})
#: hostPath.type values that fit each kind of allow-list entry ("" checks nothing). The *OrCreate
#: types never create anything here: a missing path waits, as Directory would.
_TYPES = {
    "directory": {"", "Directory", "DirectoryOrCreate"},
    "socket": {"", "Socket"},
    "file": {"", "File", "FileOrCreate"},
    "devices": {"", "CharDevice", "Directory"},
}


@dataclass(frozen=True)
class Violation:
    """One thing the policy refuses: the field (Kubernetes path notation) and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Rules:
    """Everything the check needs besides the pod."""

    policy: PolicySettings
    ceilings: Ceilings
    #: Why this sidecar cannot give containers host paths or subPaths of writable volumes
    #: safely (None: it can, with staging mounts).
    no_staging: str | None = None


def match_host_path(path: str, policy: PolicySettings) -> HostPathEntry | None:
    """The allow-list entry that names `path` exactly (a pattern entry matches component by
    component, at its own depth only), or None."""
    if not canonical(path):
        return None
    parts = path.split("/")
    for entry in policy.host_paths:
        pattern = entry.path.split("/")
        if len(pattern) == len(parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern, strict=True)):
            return entry
    return None


def host_path_volumes(spec: wire.PodSpec) -> list[str]:
    """Names of the pod's hostPath volumes."""
    return [v.name for v in spec.volumes if v.hostPath is not None]


def _profile_type(profile: dict[str, Any] | None) -> str | None:
    if not profile:
        return None
    value = profile.get("type")
    return str(value) if value is not None else None


def loosenings(settings: DockerSidecarSettings) -> list[str]:
    """One warning per loosening in force (logged at start; docs/security.md says what each
    gives away)."""
    p = settings.policy
    out = []
    for entry in p.host_paths:
        if entry.writable:
            out.append(f"host path {entry.path} may be mounted read-write: pods can leave files there for other "
                       "pods and local users")
    if p.allowed_capabilities:
        out.append(f"containers may add capabilities {', '.join(p.allowed_capabilities)}")
    if p.allow_privilege_escalation:
        out.append("containers that ask may run without no-new-privileges (setuid binaries work)")
    if p.allow_root_with_host_paths:
        out.append("containers of pods with host paths may run as root")
    if p.allow_unconfined_seccomp:
        out.append("containers that ask may run without a seccomp filter")
    if p.allow_unconfined_apparmor:
        out.append("containers that ask may run without an AppArmor profile")
    if p.allow_unmasked_proc_mount:
        out.append("containers that ask may see /proc unmasked")
    return out


def check(pod: wire.Pod, rules: Rules) -> list[Violation]:
    """Every way `pod` breaks the desktop policy (empty: the pod is admitted)."""
    return list(_violations(pod, rules))


def _violations(pod: wire.Pod, rules: Rules) -> Iterator[Violation]:
    spec = pod.spec
    policy = rules.policy
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if getattr(spec, flag):
            yield Violation(f"spec.{flag}", "host namespaces are not allowed on the desktop node")
    if spec.hostUsers is False:
        yield Violation("spec.hostUsers", "user namespaces (hostUsers: false) are not supported by the Docker sidecar")
    psc = spec.securityContext
    if psc is not None:
        if psc.sysctls:
            yield Violation("spec.securityContext.sysctls", "sysctls are not allowed on the desktop node")
        yield from _seccomp("spec.securityContext.seccompProfile", psc.seccompProfile, policy)

    by_name = {v.name: v for v in spec.volumes}
    host_volumes = set(host_path_volumes(spec))
    mounted_rw: dict[str, list[str]] = {}
    for kind, containers in (("initContainers", spec.initContainers), ("containers", spec.containers)):
        for i, c in enumerate(containers):
            where = f"spec.{kind}[{i}]"
            yield from _container(where, c, rules)
            if host_volumes and not policy.allow_root_with_host_paths and _explicit_uid(pod, c) == 0:
                field = (f"{where}.securityContext.runAsUser" if c.securityContext and c.securityContext.runAsUser == 0
                         else "spec.securityContext.runAsUser")
                yield Violation(
                    field,
                    "a pod that mounts host paths runs as a non-root uid on the desktop node "
                    "(set runAsUser to a uid other than 0)",
                )
            for j, m in enumerate(c.volumeMounts):
                if not m.readOnly:
                    mounted_rw.setdefault(m.name, []).append(f"{where}.volumeMounts[{j}]")
                volume = by_name.get(m.name)
                if not m.subPath or volume is None:
                    continue
                if m.name in host_volumes:
                    yield Violation(
                        f"{where}.volumeMounts[{j}].subPath",
                        "subPath is not supported on hostPath volumes; mount the allowed path itself",
                    )
                elif (volume.emptyDir is not None or volume.persistentVolumeClaim is not None) and rules.no_staging:
                    yield Violation(
                        f"{where}.volumeMounts[{j}].subPath",
                        f"subPath on a writable volume needs staging mounts, which this sidecar cannot make "
                        f"({rules.no_staging}); mount the whole volume (see docs/security.md)",
                    )

    for i, v in enumerate(spec.volumes):
        yield from _volume(f"spec.volumes[{i}]", v, rules, mounted_rw.get(v.name, []))


def _explicit_uid(pod: wire.Pod, c: wire.Container) -> int | None:
    """The uid the pod spec sets for container `c` (container over pod), or None."""
    if c.securityContext and c.securityContext.runAsUser is not None:
        return c.securityContext.runAsUser
    psc = pod.spec.securityContext
    return psc.runAsUser if psc else None


def _seccomp(where: str, profile: dict[str, Any] | None, policy: PolicySettings) -> Iterator[Violation]:
    kind = _profile_type(profile)
    if kind == "Unconfined" and not policy.allow_unconfined_seccomp:
        yield Violation(f"{where}.type", "unconfined seccomp is not allowed on the desktop node")
    elif kind == "Localhost":
        yield Violation(f"{where}.type", "Localhost seccomp profiles are not supported; use RuntimeDefault")


def _container(where: str, c: wire.Container, rules: Rules) -> Iterator[Violation]:
    policy = rules.policy
    sc = c.securityContext
    if sc is not None:
        if sc.privileged:
            yield Violation(f"{where}.securityContext.privileged", "privileged containers are not allowed on the desktop node")
        if sc.capabilities and sc.capabilities.add:
            allowed = set(KEPT_CAPABILITIES) | set(policy.allowed_capabilities)
            extra = sorted({normalize_capability(cap) for cap in sc.capabilities.add} - allowed)
            if extra:
                yield Violation(
                    f"{where}.securityContext.capabilities.add",
                    f"capabilities {', '.join(extra)} are not allowed (the desktop keeps {', '.join(KEPT_CAPABILITIES)}; "
                    f"allowed beyond them: {', '.join(policy.allowed_capabilities) or 'none'})",
                )
        if sc.allowPrivilegeEscalation and not policy.allow_privilege_escalation:
            yield Violation(
                f"{where}.securityContext.allowPrivilegeEscalation",
                "privilege escalation is not allowed: every container runs with no-new-privileges",
            )
        if sc.procMount not in (None, "", "Default") and not (sc.procMount == "Unmasked" and policy.allow_unmasked_proc_mount):
            yield Violation(f"{where}.securityContext.procMount", "an unmasked /proc is not allowed on the desktop node")
        yield from _seccomp(f"{where}.securityContext.seccompProfile", sc.seccompProfile, policy)
        apparmor = _profile_type(sc.appArmorProfile)
        if apparmor == "Unconfined" and not policy.allow_unconfined_apparmor:
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
    for field, message in rules.ceilings.violations(where, c):
        yield Violation(field, message)


_SOURCES = ("emptyDir", "secret", "configMap", "projected", "downwardAPI", "persistentVolumeClaim", "hostPath")


def _volume(where: str, v: wire.Volume, rules: Rules, rw_mounts: list[str]) -> Iterator[Violation]:
    kinds = [k for k in _SOURCES if getattr(v, k) is not None]
    if not kinds:
        yield Violation(
            where,
            f"volume {v.name!r} is of a kind the desktop node does not support (supported: {', '.join(_SOURCES)})",
        )
        return
    if v.hostPath is None:
        return
    policy = rules.policy
    path = v.hostPath.path
    at = f"{where}.hostPath.path"
    if not canonical(path):
        yield Violation(at, f"host path {path!r} must be absolute and plainly written (no '.', '..', '//' or trailing '/')")
        return
    entry = match_host_path(path, policy)
    if entry is None:
        allowed = ", ".join(e.path for e in policy.host_paths) or "none"
        yield Violation(at, f"host path {path} is not in the allowed host paths ({allowed}); only those exact paths, nothing below them")
        return
    if rules.no_staging:
        yield Violation(
            at,
            f"host paths cannot be given safely by this sidecar ({rules.no_staging}); run kod-docker-sidecar on "
            "the host as root to mount them (see docs/security.md)",
        )
        return
    kind = v.hostPath.type or ""
    if kind not in _TYPES[entry.type]:
        yield Violation(
            f"{where}.hostPath.type",
            f"host path {path} is allowed as {entry.type}; type {kind!r} does not fit "
            f"(use one of {', '.join(repr(t) for t in sorted(_TYPES[entry.type]))})",
        )
    # Devices are mapped, not mounted: there is no tree to plant files in; read and write is
    # what a GPU needs, creating device nodes (mknod) never is.
    if rw_mounts and not entry.writable and entry.type != "devices":
        yield Violation(
            f"{rw_mounts[0]}.readOnly",
            f"host path {path} may only be mounted read-only (set readOnly: true)",
        )
