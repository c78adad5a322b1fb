"""Structural checks of a create request, beyond what the wire models validate.

Malformed input is the caller's bug (or the user's typo in a manifest the API server let
through): it gets one 400 listing every problem, and nothing is created. Policy refusals are a
different matter, see `policy`.
"""

from __future__ import annotations

from collections.abc import Iterator

from kod import errors, names, quantity, wire

#: Volume kinds whose contents the virtual kubelet resolves into `PodCreateRequest.volumes`.
CONTENT_KINDS = ("secret", "configMap", "projected", "downwardAPI")


def content_kind(volume: wire.Volume) -> str | None:
    """'secret', 'configMap', 'projected' or 'downwardAPI' for a volume with resolved contents."""
    for kind in CONTENT_KINDS:
        if getattr(volume, kind) is not None:
            return kind
    return None


def validate(request: wire.PodCreateRequest) -> None:
    """Raise InvalidInput naming every structural problem of `request`."""
    problems = list(_problems(request))
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise errors.InvalidInput("invalid pod: " + "; ".join(problems[:10]) + more)


def _problems(request: wire.PodCreateRequest) -> Iterator[str]:
    meta = request.pod.metadata
    spec = request.pod.spec
    if not names.is_dns_subdomain(meta.name):
        yield f"metadata.name {meta.name!r} is not a DNS-1123 subdomain"
    if not names.is_dns_label(meta.namespace):
        yield f"metadata.namespace {meta.namespace!r} is not a DNS-1123 label"
    if not names.is_uid(meta.uid):
        yield f"metadata.uid {meta.uid!r} must be letters, digits and '-'"

    volumes = {v.name: v for v in spec.volumes}
    confirmed: dict[str, str] = {}
    for i, ref in enumerate(request.claims):
        if not names.is_uid(ref.uid):
            yield f"claims[{i}].uid {ref.uid!r} must be letters, digits and '-'"
        if confirmed.get(ref.name, ref.uid) != ref.uid:
            yield f"claims[{i}]: claim {ref.name!r} is given twice with different uids"
        confirmed[ref.name] = ref.uid
    seen_volumes: set[str] = set()
    for i, v in enumerate(spec.volumes):
        if not names.is_dns_label(v.name):
            yield f"spec.volumes[{i}].name {v.name!r} is not a DNS-1123 label"
        if v.name in seen_volumes:
            yield f"spec.volumes[{i}].name {v.name!r} is used twice"
        seen_volumes.add(v.name)
        if v.persistentVolumeClaim is not None:
            claim = v.persistentVolumeClaim.claimName
            if not names.is_dns_subdomain(claim):
                yield f"spec.volumes[{i}].persistentVolumeClaim.claimName is not a DNS-1123 subdomain"
            elif claim not in confirmed:
                yield (f"spec.volumes[{i}].persistentVolumeClaim: claim {claim!r} is not confirmed to exist by the "
                       "virtual kubelet (claims[]); storage is made only for claims that exist")
        if v.emptyDir is not None and v.emptyDir.medium not in (None, "", "Memory"):
            yield f"spec.volumes[{i}].emptyDir.medium {v.emptyDir.medium!r} is not supported (\"\" or Memory)"

    seen_containers: set[str] = set()
    for kind, containers in (("initContainers", spec.initContainers), ("containers", spec.containers)):
        for i, c in enumerate(containers):
            where = f"spec.{kind}[{i}]"
            if not names.is_dns_label(c.name):
                yield f"{where}.name {c.name!r} is not a DNS-1123 label"
            if c.name in seen_containers:
                yield f"{where}.name {c.name!r} is used twice in the pod"
            seen_containers.add(c.name)
            if not c.image.strip():
                yield f"{where}.image is empty"
            if kind == "initContainers" and c.restartPolicy not in (None, "Always"):
                yield f"{where}.restartPolicy must be Always (a sidecar) or unset"
            if kind == "containers" and c.restartPolicy is not None:
                yield f"{where}.restartPolicy is not supported on regular containers"
            yield from _mounts(where, c, volumes)
            for section in ("limits", "requests"):
                for name, value in getattr(c.resources, section).items():
                    if name in ("cpu", "memory", "ephemeral-storage") or name.startswith("nvidia.com/"):
                        try:
                            if quantity.parse(value) < 0:
                                yield f"{where}.resources.{section}.{name} must not be negative"
                        except errors.InvalidInput as exc:
                            yield f"{where}.resources.{section}.{name}: {exc}"

    resolved_names: set[str] = set()
    for i, rc in enumerate(request.containers):
        if rc.name not in seen_containers:
            yield f"containers[{i}].name {rc.name!r} is not a container of the pod"
        if rc.name in resolved_names:
            yield f"containers[{i}].name {rc.name!r} is given twice"
        resolved_names.add(rc.name)

    given: set[str] = set()
    for i, rv in enumerate(request.volumes):
        vol = volumes.get(rv.name)
        if vol is None:
            yield f"volumes[{i}].name {rv.name!r} is not a volume of the pod"
        elif content_kind(vol) is None:
            yield f"volumes[{i}] gives contents for {rv.name!r}, which is not a secret, configMap, projected or downwardAPI volume"
        if rv.name in given:
            yield f"volumes[{i}].name {rv.name!r} is given twice"
        given.add(rv.name)
        paths: set[str] = set()
        for j, f in enumerate(rv.files):
            if f.path in paths:
                yield f"volumes[{i}].files[{j}].path {f.path!r} is given twice"
            paths.add(f.path)
            bad = _bad_content_path(f.path)
            if bad:
                yield f"volumes[{i}].files[{j}].path {f.path!r} {bad}"
    for v in spec.volumes:
        content = content_kind(v)
        if content is None or v.name in given:
            continue
        kind = content
        source = getattr(v, kind)
        optional = getattr(source, "optional", None) if kind in ("secret", "configMap") else None
        if not optional:
            yield f"volume {v.name!r} ({kind}): its contents are missing from the request's volumes"


def _bad_content_path(path: str) -> str | None:
    """Why `path` may not name a file of a Secret, ConfigMap, projected or downwardAPI volume
    (None: it may). As the API server's rules for keys and item paths: relative, no empty or '.'
    components, none starting with '..' (the kubelet's own `..data` links live there)."""
    if path.startswith("/"):
        return "must be relative"
    for part in path.split("/"):
        if part in ("", "."):
            return "must not contain empty or '.' components"
        if part.startswith(".."):
            return "must not have a component starting with '..'"
    if "\0" in path:
        return "must not contain NUL"
    return None


def _mounts(where: str, c: wire.Container, volumes: dict[str, wire.Volume]) -> Iterator[str]:
    paths: set[str] = set()
    for j, m in enumerate(c.volumeMounts):
        at = f"{where}.volumeMounts[{j}]"
        if m.name not in volumes:
            yield f"{at}.name {m.name!r} is not a volume of the pod"
        if not m.mountPath.startswith("/"):
            yield f"{at}.mountPath {m.mountPath!r} must be absolute"
        if ":" in m.mountPath:
            yield f"{at}.mountPath must not contain ':'"
        if m.mountPath.rstrip("/") in paths:
            yield f"{at}.mountPath {m.mountPath!r} is mounted twice"
        paths.add(m.mountPath.rstrip("/"))
        if m.subPath:
            parts = m.subPath.strip("/").split("/") if not m.subPath.startswith("/") else ["/"]
            volume = volumes.get(m.name)
            if m.subPath.startswith("/") or ".." in parts:
                yield f"{at}.subPath {m.subPath!r} must be relative and must not contain '..'"
            elif any(p in ("", ".") for p in parts):
                yield f"{at}.subPath {m.subPath!r} must not contain empty or '.' components"
            elif volume is not None and content_kind(volume) is not None and _bad_content_path(m.subPath.strip("/")):
                yield f"{at}.subPath {m.subPath!r} {_bad_content_path(m.subPath.strip('/'))}"
        if m.mountPropagation not in (None, "None", "HostToContainer", "Bidirectional"):
            yield f"{at}.mountPropagation {m.mountPropagation!r} is not one of None, HostToContainer, Bidirectional"
