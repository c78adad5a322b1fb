"""Resolve what a pod references into the `PodCreateRequest` the sidecar runs.

The kubelet does this work on a real node; here it happens before anything reaches InterLink, so
that the sidecar never needs Kubernetes credentials. Covered, with the kubelet's semantics:

- env: `envFrom` (ConfigMap/Secret, with prefix, optional), then `env` in order: literal values with
  `$(VAR)` expansion against the variables declared so far and the service variables, `valueFrom`
  configMapKeyRef / secretKeyRef / fieldRef / resourceFieldRef (values from a source are not
  expanded); service-link variables like the kubelet's (`enableServiceLinks`);
- command and args expanded with the container's final environment;
- Secret, ConfigMap, downwardAPI and projected volumes (items, modes, optional; projected
  serviceAccountToken through the TokenRequest API, bound to the pod);
- PersistentVolumeClaims: each one the pod mounts must exist (and not be being deleted), as the
  kubelet requires before it mounts one; its name and uid go into the request, so the sidecar
  makes storage only for claims that exist, one per claim uid.

Limits, said plainly: `status.podIP`/`status.podIPs` are not known before the sidecar creates the
pod's network namespace, so they resolve to "" (as on a kubelet before the sandbox exists).
Environment variables are resolved once, at creation (as on a kubelet); volume contents are
resolved again while the pod runs (`volume_contents`, by vk_bridge/live_volumes.py), so that
ConfigMap, Secret, downward API and token files follow their sources like a kubelet's do.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

from kod import errors, quantity, wire
from vk_bridge.expansion import expand, mapping_for

#: The projected-token expiry the kubelet asks for when a pod does not say.
DEFAULT_TOKEN_EXPIRATION_SECONDS = 3600
#: Services whose variables every pod gets, whatever enableServiceLinks says.
MASTER_SERVICES = frozenset({"kubernetes"})


class UnresolvedReference(errors.NotFound):
    """A pod references something that does not exist (yet). The kubelet keeps such a pod waiting
    and retries; `reason` is the container waiting reason to show (`CreateContainerConfigError`
    for env, `ContainerCreating` for volumes) and `event_reason` the Event's reason."""

    def __init__(self, message: str, *, reason: str, event_reason: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.event_reason = event_reason


def _env_error(message: str) -> UnresolvedReference:
    return UnresolvedReference(message, reason="CreateContainerConfigError", event_reason="Failed")


def _volume_error(volume: str, message: str) -> UnresolvedReference:
    return UnresolvedReference(
        f'MountVolume.SetUp failed for volume "{volume}" : {message}',
        reason="ContainerCreating",
        event_reason="FailedMount",
    )


class References(Protocol):
    """Where the resolver reads what pods reference. Implemented on the Kubernetes API by
    `vk_bridge.references.KubeReferences`; returned objects are read-only."""

    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The Secret object, or None when it does not exist."""

    async def config_map(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The ConfigMap object, or None when it does not exist."""

    async def service_account_token(
        self, namespace: str, service_account: str, *, audiences: list[str], expiration_seconds: int,
        pod_name: str, pod_uid: str,
    ) -> str:
        """A token from the TokenRequest API, bound to the pod."""

    async def services(self, namespace: str) -> Sequence[Mapping[str, Any]]:
        """The Services of `namespace` plus the master services of `default`."""

    async def persistent_volume_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The PersistentVolumeClaim object, or None when it does not exist."""


@dataclass(frozen=True)
class NodeFacts:
    """What the resolver needs to know about the node the pod runs on."""

    name: str
    host_ips: tuple[str, ...]
    allocatable: Mapping[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Downward API
# --------------------------------------------------------------------------------------------

_SUBSCRIPT = re.compile(r"^(metadata\.(?:labels|annotations))\['(.*)'\]$")


def go_quote(value: str) -> str:
    """Go's `%q` of a string (strconv.Quote), used by the downward API's label/annotation format."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}[ch])
        elif ch.isprintable() and code != 0x7F:
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def format_map(values: Mapping[str, str]) -> str:
    """The downward API's rendering of labels/annotations: sorted `key="value"` lines."""
    return "\n".join(f"{key}={go_quote(values[key])}" for key in sorted(values))


def field_value(pod: Mapping[str, Any], path: str, *, node: NodeFacts, pod_ips: Sequence[str] = ()) -> str:
    """The value of a downward-API fieldRef, as the kubelet computes it."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    sub = _SUBSCRIPT.match(path)
    if sub:
        source, key = sub.groups()
        values = meta.get(source.split(".")[1]) or {}
        return str(values.get(key, ""))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName") or node.name,
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": node.host_ips[0] if node.host_ips else "",
        "status.hostIPs": ",".join(node.host_ips),
        "status.podIP": pod_ips[0] if pod_ips else "",
        "status.podIPs": ",".join(pod_ips),
    }
    if path in simple:
        return str(simple[path])
    if path == "metadata.labels":
        return format_map(meta.get("labels") or {})
    if path == "metadata.annotations":
        return format_map(meta.get("annotations") or {})
    raise errors.InvalidInput(f"unsupported fieldPath: {path}")


def _find_container(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    spec = pod.get("spec") or {}
    for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        if c.get("name") == name:
            found: Mapping[str, Any] = c
            return found
    return None


def resource_value(
    pod: Mapping[str, Any], ref: Mapping[str, Any], *, container: Mapping[str, Any] | None, node: NodeFacts
) -> str:
    """The value of a resourceFieldRef: limits default to the node's allocatable, values are
    divided by the divisor and rounded up (the kubelet's ExtractContainerResourceValue)."""
    if ref.get("containerName"):
        container = _find_container(pod, ref["containerName"])
        if container is None:
            raise errors.InvalidInput(f"resourceFieldRef: no container {ref['containerName']!r} in the pod")
    if container is None:
        raise errors.InvalidInput("resourceFieldRef in a volume needs containerName")
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise errors.InvalidInput(f"unsupported container resource: {resource!r}")
    res = container.get("resources") or {}
    raw = (res.get(kind) or {}).get(name)
    if raw is None and kind == "limits":
        raw = node.allocatable.get(name)
    value = quantity.parse(raw) if raw is not None else Fraction(0)
    divisor = quantity.parse(ref.get("divisor") or "1")
    if divisor == 0:
        raise errors.InvalidInput(f"resourceFieldRef {resource}: divisor must not be zero")
    if name == "cpu":
        result = math.ceil(quantity.milli_value(value) / quantity.milli_value(divisor))
    else:
        result = math.ceil(quantity.int_value(value) / quantity.int_value(divisor))
    return str(result)


# --------------------------------------------------------------------------------------------
# Service links
# --------------------------------------------------------------------------------------------


def _env_name(name: str) -> str:
    return name.replace("-", "_").upper()


def _service_ip_set(service: Mapping[str, Any]) -> bool:
    ip = (service.get("spec") or {}).get("clusterIP") or ""
    return ip not in ("", "None")


def service_env(services: Sequence[Mapping[str, Any]], namespace: str, enable_links: bool) -> dict[str, str]:
    """The kubelet's service variables: master services of `default` always, the services of the
    pod's namespace when `enableServiceLinks` (FOO_SERVICE_HOST, FOO_PORT_80_TCP_ADDR, ...)."""
    chosen: dict[str, Mapping[str, Any]] = {}
    for svc in services:
        if not _service_ip_set(svc) or not (svc.get("spec") or {}).get("ports"):
            continue
        meta = svc.get("metadata") or {}
        name, ns = meta.get("name", ""), meta.get("namespace", "")
        if ns == "default" and name in MASTER_SERVICES:
            chosen.setdefault(name, svc)
        elif ns == namespace and enable_links:
            chosen[name] = svc
    env: dict[str, str] = {}
    for name in sorted(chosen):
        spec = chosen[name]["spec"]
        ip = spec["clusterIP"]
        ports = spec["ports"]
        prefix = _env_name(name)
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
        host = f"[{ip}]" if ":" in ip else ip
        for i, port in enumerate(ports):
            proto = (port.get("protocol") or "TCP").upper()
            url = f"{proto.lower()}://{host}:{port['port']}"
            if i == 0:
                env[f"{prefix}_PORT"] = url
            pp = f"{prefix}_PORT_{port['port']}_{proto}"
            env[pp] = url
            env[f"{pp}_PROTO"] = proto.lower()
            env[f"{pp}_PORT"] = str(port["port"])
            env[f"{pp}_ADDR"] = ip
    return env


# --------------------------------------------------------------------------------------------
# The resolver
# --------------------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _decode_secret_value(data: str) -> str:
    # Env values are strings; a Secret's bytes are taken as UTF-8 like Go's string(bytes).
    return base64.b64decode(data).decode("utf-8", "replace")


class Resolver:
    """Builds `PodCreateRequest`s, and a running pod's volume contents again. One per process;
    caches nothing between pods (tokens are cached by the references' token manager)."""

    def __init__(self, refs: References, node: NodeFacts, *, enable_service_links_default: bool = True) -> None:
        self._refs = refs
        self.node = node
        self._service_links_default = enable_service_links_default

    async def pod_create_request(self, pod: Mapping[str, Any]) -> wire.PodCreateRequest:
        """Resolve everything `pod` (a Kubernetes Pod as JSON) references. Raises
        `UnresolvedReference` for a missing Secret/ConfigMap/key, `InvalidInput` for what
        cannot work."""
        ctx = _PodContext(self, pod)
        containers = []
        spec = pod.get("spec") or {}
        for c in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
            containers.append(await ctx.container(c))
        volumes = [v for v in [await ctx.volume(vol) for vol in spec.get("volumes") or []] if v is not None]
        claims = [await ctx.claim(vol) for vol in spec.get("volumes") or [] if vol.get("persistentVolumeClaim")]
        return wire.PodCreateRequest(
            pod=wire.Pod.model_validate(pod), containers=containers, volumes=volumes, claims=_unique(claims)
        )

    async def volume_contents(self, pod: Mapping[str, Any], refs: References | None = None) -> list[wire.ResolvedVolume]:
        """The contents of `pod`'s Secret, ConfigMap, downwardAPI and projected volumes now, read
        through `refs` (default: this resolver's). Raises as `pod_create_request` does."""
        ctx = _PodContext(self, pod, refs)
        spec = pod.get("spec") or {}
        return [v for v in [await ctx.volume(vol) for vol in spec.get("volumes") or []] if v is not None]


class _PodContext:
    """Resolution of one pod: the objects it references are fetched once each."""

    def __init__(self, resolver: Resolver, pod: Mapping[str, Any], refs: References | None = None) -> None:
        self.r = resolver
        self.refs = refs or resolver._refs
        self.pod = pod
        self.meta = pod.get("metadata") or {}
        self.spec = pod.get("spec") or {}
        self.ns = self.meta.get("namespace") or "default"
        self._secrets: dict[str, Mapping[str, Any] | None] = {}
        self._config_maps: dict[str, Mapping[str, Any] | None] = {}
        self._service_env: dict[str, str] | None = None

    async def secret(self, name: str) -> Mapping[str, Any] | None:
        if name not in self._secrets:
            self._secrets[name] = await self.refs.secret(self.ns, name)
        return self._secrets[name]

    async def config_map(self, name: str) -> Mapping[str, Any] | None:
        if name not in self._config_maps:
            self._config_maps[name] = await self.refs.config_map(self.ns, name)
        return self._config_maps[name]

    async def services(self) -> dict[str, str]:
        if self._service_env is None:
            links = self.spec.get("enableServiceLinks")
            enable = self.r._service_links_default if links is None else bool(links)
            self._service_env = service_env(await self.r._refs.services(self.ns), self.ns, enable)
        return self._service_env

    # -- containers ---------------------------------------------------------------------------

    async def container(self, c: Mapping[str, Any]) -> wire.ResolvedContainer:
        env = await self.env(c)
        mapping = mapping_for(env)
        command = [expand(a, mapping) for a in c["command"]] if c.get("command") is not None else None
        args = [expand(a, mapping) for a in c["args"]] if c.get("args") is not None else None
        return wire.ResolvedContainer(
            name=c["name"],
            env=[wire.EnvVar(name=k, value=v) for k, v in env.items()],
            command=command,
            args=args,
        )

    async def env(self, c: Mapping[str, Any]) -> dict[str, str]:
        """The container's final environment (the kubelet's makeEnvironmentVariables)."""
        declared: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix") or ""
            if src.get("configMapRef"):
                ref = src["configMapRef"]
                cm = await self.config_map(ref["name"])
                if cm is None:
                    if ref.get("optional"):
                        continue
                    raise _env_error(f'configmap "{ref["name"]}" not found')
                for key, value in (cm.get("data") or {}).items():
                    declared[prefix + key] = value
            elif src.get("secretRef"):
                ref = src["secretRef"]
                secret = await self.secret(ref["name"])
                if secret is None:
                    if ref.get("optional"):
                        continue
                    raise _env_error(f'secret "{ref["name"]}" not found')
                for key, value in (secret.get("data") or {}).items():
                    declared[prefix + key] = _decode_secret_value(value)
        services = await self.services()
        mapping = mapping_for(declared, services)
        for var in c.get("env") or []:
            name = var["name"]
            value = var.get("value") or ""
            source = var.get("valueFrom")
            if value:
                declared[name] = expand(value, mapping)
                continue
            if not source:
                declared[name] = ""
                continue
            resolved = await self.value_from(c, source)
            if resolved is None:  # optional and missing: the variable is not set at all
                continue
            declared[name] = resolved
        for key, value in services.items():
            declared.setdefault(key, value)
        return declared

    async def value_from(self, c: Mapping[str, Any], source: Mapping[str, Any]) -> str | None:
        if source.get("fieldRef"):
            return field_value(self.pod, source["fieldRef"]["fieldPath"], node=self.r.node)
        if source.get("resourceFieldRef"):
            return resource_value(self.pod, source["resourceFieldRef"], container=c, node=self.r.node)
        if source.get("configMapKeyRef"):
            ref = source["configMapKeyRef"]
            cm = await self.config_map(ref["name"])
            optional = bool(ref.get("optional"))
            if cm is None:
                if optional:
                    return None
                raise _env_error(f'configmap "{ref["name"]}" not found')
            data = cm.get("data") or {}
            if ref["key"] not in data:
                if optional:
                    return None
                raise _env_error(f"couldn't find key {ref['key']} in ConfigMap {self.ns}/{ref['name']}")
            return str(data[ref["key"]])
        if source.get("secretKeyRef"):
            ref = source["secretKeyRef"]
            secret = await self.secret(ref["name"])
            optional = bool(ref.get("optional"))
            if secret is None:
                if optional:
                    return None
                raise _env_error(f'secret "{ref["name"]}" not found')
            data = secret.get("data") or {}
            if ref["key"] not in data:
                if optional:
                    return None
                raise _env_error(f"couldn't find key {ref['key']} in Secret {self.ns}/{ref['name']}")
            return _decode_secret_value(data[ref["key"]])
        raise errors.InvalidInput(f"unsupported env valueFrom: {sorted(source)}")

    # -- volumes ------------------------------------------------------------------------------

    async def volume(self, vol: Mapping[str, Any]) -> wire.ResolvedVolume | None:
        name = vol["name"]
        if vol.get("secret") is not None:
            src = vol["secret"]
            files = await self.secret_files(name, src.get("secretName") or "", src.get("items"), bool(src.get("optional")))
            return wire.ResolvedVolume(name=name, files=files, defaultMode=_mode(src.get("defaultMode"), 0o644))
        if vol.get("configMap") is not None:
            src = vol["configMap"]
            files = await self.config_map_files(name, src.get("name") or "", src.get("items"), bool(src.get("optional")))
            return wire.ResolvedVolume(name=name, files=files, defaultMode=_mode(src.get("defaultMode"), 0o644))
        if vol.get("downwardAPI") is not None:
            src = vol["downwardAPI"]
            files = self.downward_files(name, src.get("items") or [])
            return wire.ResolvedVolume(name=name, files=files, defaultMode=_mode(src.get("defaultMode"), 0o644))
        if vol.get("projected") is not None:
            src = vol["projected"]
            default_mode = _mode(src.get("defaultMode"), 0o644)
            projected: list[wire.FileItem] = []
            for source in src.get("sources") or []:
                projected.extend(await self.projected_files(name, source))
            return wire.ResolvedVolume(name=name, files=_dedupe(projected), defaultMode=default_mode)
        return None

    async def claim(self, vol: Mapping[str, Any]) -> wire.ClaimRef:
        """The claim volume `vol` names, confirmed to exist (the kubelet's check before mounting)."""
        name = str(vol["persistentVolumeClaim"].get("claimName") or "")
        found = await self.r._refs.persistent_volume_claim(self.ns, name)
        if found is None:
            raise _volume_error(vol["name"], f'persistentvolumeclaim "{name}" not found')
        meta = found.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            raise _volume_error(vol["name"], f'persistentvolumeclaim "{name}" is being deleted')
        return wire.ClaimRef(name=name, uid=str(meta.get("uid") or ""))

    async def secret_files(
        self, volume: str, secret_name: str, items: list[Mapping[str, Any]] | None, optional: bool
    ) -> list[wire.FileItem]:
        secret = await self.secret(secret_name)
        if secret is None:
            if optional:
                return []
            raise _volume_error(volume, f'secret "{secret_name}" not found')
        data: dict[str, str] = dict(secret.get("data") or {})
        return _project(volume, data, items, optional, kind="secret", obj=secret_name)

    async def config_map_files(
        self, volume: str, cm_name: str, items: list[Mapping[str, Any]] | None, optional: bool
    ) -> list[wire.FileItem]:
        cm = await self.config_map(cm_name)
        if cm is None:
            if optional:
                return []
            raise _volume_error(volume, f'configmap "{cm_name}" not found')
        data = {k: _b64(v) for k, v in (cm.get("data") or {}).items()}
        data.update(cm.get("binaryData") or {})
        return _project(volume, data, items, optional, kind="configmap", obj=cm_name)

    def downward_files(self, volume: str, items: list[Mapping[str, Any]]) -> list[wire.FileItem]:
        files = []
        for item in items:
            if item.get("fieldRef"):
                value = field_value(self.pod, item["fieldRef"]["fieldPath"], node=self.r.node)
            elif item.get("resourceFieldRef"):
                value = resource_value(self.pod, item["resourceFieldRef"], container=None, node=self.r.node)
            else:
                raise errors.InvalidInput(f"volume {volume!r}: downwardAPI item {item.get('path')!r} has no source")
            files.append(wire.FileItem(path=item["path"], data=_b64(value), mode=item.get("mode")))
        return files

    async def projected_files(self, volume: str, source: Mapping[str, Any]) -> list[wire.FileItem]:
        if source.get("secret") is not None:
            s = source["secret"]
            return await self.secret_files(volume, s.get("name") or "", s.get("items"), bool(s.get("optional")))
        if source.get("configMap") is not None:
            s = source["configMap"]
            return await self.config_map_files(volume, s.get("name") or "", s.get("items"), bool(s.get("optional")))
        if source.get("downwardAPI") is not None:
            return self.downward_files(volume, source["downwardAPI"].get("items") or [])
        if source.get("serviceAccountToken") is not None:
            s = source["serviceAccountToken"]
            audience = s.get("audience") or ""
            token = await self.refs.service_account_token(
                self.ns,
                self.spec.get("serviceAccountName") or "default",
                audiences=[audience] if audience else [],
                expiration_seconds=int(s.get("expirationSeconds") or DEFAULT_TOKEN_EXPIRATION_SECONDS),
                pod_name=self.meta["name"],
                pod_uid=self.meta["uid"],
            )
            return [wire.FileItem(path=s["path"], data=_b64(token))]
        raise errors.InvalidInput(
            f"volume {volume!r}: projected source {sorted(source)} is not supported on the desktop node"
        )


def _mode(value: Any, default: int) -> int:
    return int(value) if value is not None else default


def _project(
    volume: str, data: Mapping[str, str], items: list[Mapping[str, Any]] | None, optional: bool, *, kind: str, obj: str
) -> list[wire.FileItem]:
    """Secret/ConfigMap keys to files: every key, or only `items` (key -> path, mode)."""
    if not items:
        return [wire.FileItem(path=key, data=value) for key, value in sorted(data.items())]
    files = []
    for item in items:
        key = item["key"]
        if key not in data:
            if optional:
                continue
            raise _volume_error(volume, f"{kind} {obj!r} has no key {key!r}, which the volume's items reference")
        files.append(wire.FileItem(path=item["path"], data=data[key], mode=item.get("mode")))
    return files


def _unique(claims: list[wire.ClaimRef]) -> list[wire.ClaimRef]:
    """Each claim once (two volumes may name the same claim)."""
    seen: dict[str, wire.ClaimRef] = {}
    for c in claims:
        seen.setdefault(c.name, c)
    return list(seen.values())


def _dedupe(files: list[wire.FileItem]) -> list[wire.FileItem]:
    # Projected sources may write the same path; the kubelet keeps the last one.
    by_path: dict[str, wire.FileItem] = {}
    for f in files:
        by_path[f.path] = f
    return list(by_path.values())

