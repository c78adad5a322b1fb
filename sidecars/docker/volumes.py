"""Where each pod volume lives in Docker, how it is filled, and how containers mount it.

The sidecar may itself run in a container, so nothing it writes to its own file system is
visible to dockerd; every byte goes through the Engine API instead. Each pod gets at most two
private Docker volumes, both mounted by its infra container (which holds them for the pod's life):

    mem   a tmpfs volume: Secret, ConfigMap, projected and downwardAPI contents, and emptyDirs
          with medium Memory. Secrets never touch a disk; the tmpfs lives only while the infra
          container runs (it is stopped when the pod finishes and removed with the pod).
    disk  a local volume: emptyDirs on disk.

Each pod volume is a subdirectory of one of them (`<volume name>/`), written with one
`PUT /containers/{infra}/archive` (a tar built here, with the modes and ownership the kubelet
would give), and bind-mounted from the engine's host path into the containers that mount it.
PersistentVolumeClaims are named volumes of their own (`naming.pvc_volume_name`).

Host paths, and subPaths of volumes containers can write, are never handed to Docker as paths:
`mounter.py` opens them without following symlinks and stages the opened inode on a root-only
path (`staging.py`); `container_mounts` gets those staged sources and binds them with private
propagation. Allow-listed device paths become Docker device mappings (of the staged path too).
"""

from __future__ import annotations

import base64
import io
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from kod import wire
from kod.quantity import to_bytes
from sidecars.docker import atomic_writer, naming, termination
from sidecars.docker.ceilings import Ceilings
from sidecars.docker.policy import match_host_path
from sidecars.docker.settings import HostPathKind, PolicySettings
from sidecars.docker.validation import content_kind

Kind = Literal["mem", "disk", "pvc", "host", "device"]

#: Directory modes of the kubelet: emptyDir 0777; Secret, projected and downwardAPI volumes are
#: tmpfs mounts (1777); ConfigMap volumes are emptyDir-backed (0777).
_ROOT_MODES = {"secret": 0o1777, "projected": 0o1777, "downwardAPI": 0o1777, "configMap": 0o777}
_DIR_MODE = 0o755


@dataclass(frozen=True)
class PlannedVolume:
    """One pod volume and where it lives."""

    name: str
    kind: Kind
    #: Mode of the volume's root directory (mem and disk).
    root_mode: int = 0o777
    #: Always mounted read-only (Secret, ConfigMap, projected, downwardAPI), like the kubelet does.
    read_only: bool = False
    #: Holds files from the request (Secret, ConfigMap, projected, downwardAPI).
    has_contents: bool = False
    #: Writable by containers, so a subPath into it may meet a symlink planted by a container.
    writable: bool = False
    claim: str | None = None
    host_path: str | None = None
    #: What the allow-list says the host object is (host and device volumes).
    host_kind: HostPathKind | None = None
    #: The allow-list entry lets pods mount it read-write.
    host_writable: bool = False
    #: uids besides root and the sidecar's own that may own the host path (the entry's owners).
    host_owners: tuple[int, ...] = ()


def plan(spec: wire.PodSpec, policy: PolicySettings) -> dict[str, PlannedVolume]:
    """Where every volume of `spec` lives. Assumes the policy admitted the pod."""
    out: dict[str, PlannedVolume] = {}
    for v in spec.volumes:
        kind = content_kind(v)
        if kind is not None:
            out[v.name] = PlannedVolume(v.name, "mem", root_mode=_ROOT_MODES[kind], read_only=True, has_contents=True)
        elif v.emptyDir is not None:
            area: Kind = "mem" if v.emptyDir.medium == "Memory" else "disk"
            out[v.name] = PlannedVolume(v.name, area, root_mode=0o777, writable=True)
        elif v.persistentVolumeClaim is not None:
            out[v.name] = PlannedVolume(
                v.name,
                "pvc",
                read_only=bool(v.persistentVolumeClaim.readOnly),
                writable=True,
                claim=v.persistentVolumeClaim.claimName,
            )
        elif v.hostPath is not None:
            entry = match_host_path(v.hostPath.path, policy)
            if entry is None:
                continue  # refused by the policy (or no longer allowed: adoption stops such a pod)
            kind_h: Kind = "device" if entry.type == "devices" else "host"
            out[v.name] = PlannedVolume(
                v.name, kind_h, writable=entry.writable, host_path=v.hostPath.path, host_kind=entry.type,
                host_writable=entry.writable, host_owners=tuple(entry.owners),
            )
    if termination.wanted(spec):
        # The containers' termination message files (`termination.py`), in the disk area.
        out[termination.VOLUME] = PlannedVolume(termination.VOLUME, "disk", root_mode=0o755)
    return out


def areas(planned: dict[str, PlannedVolume]) -> list[Literal["mem", "disk"]]:
    """The private volumes the pod needs."""
    kinds = {p.kind for p in planned.values()}
    out: list[Literal["mem", "disk"]] = []
    if "mem" in kinds:
        out.append("mem")
    if "disk" in kinds:
        out.append("disk")
    return out


def claims(planned: dict[str, PlannedVolume]) -> list[str]:
    """The PVC claim names the pod mounts, each once."""
    return sorted({p.claim for p in planned.values() if p.kind == "pvc" and p.claim})


@dataclass
class Locations:
    """A pod's Docker volumes: (volume name, host path as the engine sees it)."""

    mem: tuple[str, str] | None = None
    disk: tuple[str, str] | None = None
    #: claim -> (Docker volume name, host path)
    pvcs: dict[str, tuple[str, str]] = field(default_factory=dict)

    def area(self, kind: str) -> tuple[str, str] | None:
        return self.mem if kind == "mem" else self.disk if kind == "disk" else None

    def root(self, kind: str) -> str | None:
        area = self.area(kind)
        return area[1] if area else None


#: Room for directories and the marker in a pod's tmpfs, beyond its files' bytes.
_TMPFS_SLACK = 1 << 20
_PAGE = 4096


def memory_area_size(
    spec: wire.PodSpec,
    planned: dict[str, PlannedVolume],
    contents: Iterable[wire.ResolvedVolume],
    ceilings: Ceilings,
    *,
    cap: str | None = None,
) -> int:
    """Bytes of the pod's tmpfs: its content files (each rounded up to a page) plus, for each
    memory emptyDir, its sizeLimit, else the largest memory limit of the containers that mount
    it (every container has one: the desktop's default if it sets none). `cap` (the
    `memory_volume_size` setting) bounds the emptyDirs' share; the contents always fit, twice:
    a live update (atomic_writer.py) holds the old and the new files for an instant."""
    files = sum(
        (len(base64.b64decode(f.data)) + _PAGE - 1) // _PAGE * _PAGE + _PAGE for rv in contents for f in rv.files
    )
    dirs = 0
    containers = [*spec.initContainers, *spec.containers]
    for v in spec.volumes:
        pv = planned.get(v.name)
        if pv is None or pv.kind != "mem" or v.emptyDir is None:
            continue
        if v.emptyDir.sizeLimit:
            dirs += to_bytes(v.emptyDir.sizeLimit)
        else:
            users = [c for c in containers if any(m.name == v.name for m in c.volumeMounts)]
            dirs += max((ceilings.limits_of(c)[0] for c in users), default=0)
    if cap is not None:
        dirs = min(dirs, to_bytes(cap))
    return 2 * files + dirs + _TMPFS_SLACK


def infra_path(pv: PlannedVolume, sub_path: str | None = None) -> str:
    """Where the infra container sees volume `pv` (or a subPath of it)."""
    if pv.kind == "pvc":
        base = f"{naming.INFRA_PVC}/{pv.claim}"
    elif pv.kind in ("mem", "disk"):
        base = f"{naming.INFRA_ROOT}/{pv.kind}/{pv.name}"
    else:
        raise ValueError(f"volume {pv.name} is not mounted in the infra container")
    return f"{base}/{sub_path}" if sub_path else base


def infra_mounts(locations: Locations) -> list[dict[str, Any]]:
    """The infra container's mounts: the private volumes and every PVC of the pod."""
    out: list[dict[str, Any]] = []
    for kind, target in (("mem", naming.INFRA_MEM), ("disk", naming.INFRA_DISK)):
        area = locations.area(kind)
        if area is not None:
            out.append(_volume_mount(area[0], target, read_only=False))
    for claim, (volume, _) in sorted(locations.pvcs.items()):
        out.append(_volume_mount(volume, f"{naming.INFRA_PVC}/{claim}", read_only=False))
    return out


def _volume_mount(volume: str, target: str, *, read_only: bool) -> dict[str, Any]:
    return {"Type": "volume", "Source": volume, "Target": target, "ReadOnly": read_only, "VolumeOptions": {"NoCopy": True}}


def _bind(source: str, target: str, *, read_only: bool, propagation: str = "rslave") -> dict[str, Any]:
    # The engine insists on rslave (or rshared) for binds from below its root (/var/lib/docker),
    # which is where the pod volumes' directories are.
    return {
        "Type": "bind",
        "Source": source,
        "Target": target,
        "ReadOnly": read_only,
        "BindOptions": {"Propagation": propagation},
    }


@dataclass
class ContainerMounts:
    """What a container's create body needs for its volume mounts."""

    mounts: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, str]] = field(default_factory=list)
    #: Allow-listed host paths and devices the container gets (warned about at run time).
    host_access: list[str] = field(default_factory=list)


def mount_read_only(m: wire.VolumeMount, pv: PlannedVolume) -> bool:
    """Whether the container gets mount `m` of `pv` read-only."""
    return bool(m.readOnly) or pv.read_only or (pv.kind == "host" and not pv.host_writable)


def needs_staging(m: wire.VolumeMount, pv: PlannedVolume) -> bool:
    """Host paths and subPaths of volumes containers can write are staged (`mounter.py`)."""
    return pv.kind in ("host", "device") or bool(m.subPath and pv.writable and pv.kind in ("mem", "disk", "pvc"))


def container_mounts(
    c: wire.Container, planned: dict[str, PlannedVolume], locations: Locations, staged: dict[int, str] | None = None
) -> ContainerMounts:
    """Mounts and devices of container `c`; `staged` maps the index of every mount that
    `needs_staging` to its staged source. Raises LookupError when a volume's Docker volume is
    not known (it was removed under the pod) or a staged source is missing."""
    staged = staged or {}
    out = ContainerMounts()
    for j, m in enumerate(c.volumeMounts):
        pv = planned.get(m.name)
        if pv is None:
            raise LookupError(f"volume {m.name} is not allowed on this node")
        sub = m.subPath.strip("/") if m.subPath else ""
        read_only = mount_read_only(m, pv)
        if needs_staging(m, pv):
            if j not in staged:
                raise LookupError(f"the mount of volume {m.name} at {m.mountPath} was not staged")
            source = staged[j]
            if pv.kind == "device":
                out.devices.append({"PathOnHost": source, "PathInContainer": m.mountPath, "CgroupPermissions": "rw"})
            else:
                # Staged binds live in a private mount: private propagation is the only kind there.
                out.mounts.append(_bind(source, m.mountPath, read_only=read_only, propagation="rprivate"))
            if pv.host_path is not None:
                out.host_access.append(pv.host_path)
        elif pv.kind in ("mem", "disk"):
            root = locations.root(pv.kind)
            if root is None:
                raise LookupError(f"the pod's {pv.kind} volume is missing")
            # Only read-only content volumes (written by the sidecar) get a subPath bound by
            # path: no container can write there, so nothing on the path can change.
            source = f"{root}/{pv.name}" + (f"/{sub}" if sub else "")
            out.mounts.append(_bind(source, m.mountPath, read_only=read_only))
        elif pv.kind == "pvc":
            assert pv.claim is not None
            if pv.claim not in locations.pvcs:
                raise LookupError(f"the volume of claim {pv.claim} is missing")
            volume, _ = locations.pvcs[pv.claim]
            out.mounts.append(_volume_mount(volume, m.mountPath, read_only=read_only))
    return out


def volume_dir(pv: PlannedVolume, locations: Locations) -> tuple[str, str]:
    """Where `pv`'s directory is on the host, as (base, name): `base` is the sidecar's (below
    Docker's root-only directories), `name` the volume's own directory in it, which the pod may
    chown (for mem and disk volumes its subdirectory of the area, for a claim the volume's
    `_data`)."""
    if pv.kind == "pvc":
        assert pv.claim is not None
        if pv.claim not in locations.pvcs:
            raise LookupError(f"the volume of claim {pv.claim} is missing")
        base, _, name = locations.pvcs[pv.claim][1].rstrip("/").rpartition("/")
        return base, name
    root = locations.root(pv.kind)
    if root is None:
        raise LookupError(f"the pod's {pv.kind} volume is missing")
    return root.rstrip("/"), pv.name


# ------------------------------------------------------------------------------ contents


class _Tar:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.now = time.time()
        self.dirs: set[str] = set()

    def dir(self, path: str, mode: int, gid: int = 0) -> None:
        if path in self.dirs:
            return
        self.dirs.add(path)
        info = tarfile.TarInfo(path + "/")
        info.type = tarfile.DIRTYPE
        info.mode = mode
        info.gid = gid
        info.mtime = self.now
        self.tar.addfile(info)

    def file(self, path: str, data: bytes, mode: int, gid: int = 0) -> None:
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = mode
        info.gid = gid
        info.mtime = self.now
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, path: str, target: str) -> None:
        info = tarfile.TarInfo(path)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        info.mode = 0o777
        info.mtime = self.now
        self.tar.addfile(info)

    def close(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def _parents(path: str) -> Iterable[str]:
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


def payload(rv: wire.ResolvedVolume, *, fs_group: int | None) -> dict[str, atomic_writer.Payload]:
    """A content volume's files as the kubelet writes them: each file's mode, else the volume's
    default; with an fsGroup, readable by the group too. (Population and updates alike.)"""
    out: dict[str, atomic_writer.Payload] = {}
    for f in rv.files:
        mode = f.mode if f.mode is not None else rv.defaultMode
        if fs_group:
            mode |= 0o440
        out[f.path] = atomic_writer.Payload(base64.b64decode(f.data), mode)
    return out


def population_tar(
    spec: wire.PodSpec,
    planned: dict[str, PlannedVolume],
    contents: Iterable[wire.ResolvedVolume],
    *,
    new_claims: Iterable[str] = (),
) -> bytes:
    """The tar to extract at `naming.INFRA_ROOT` in the infra container: every mem and disk
    volume's root and subPath directories, the files of the content volumes, the roots of newly
    created PVC volumes (0777, as local provisioners make them), and last the marker that proves
    the extraction completed."""
    fs_group = spec.securityContext.fsGroup if spec.securityContext else None
    gid = fs_group or 0
    by_name = {rv.name: rv for rv in contents}
    tar = _Tar()
    for pv in planned.values():
        if pv.kind not in ("mem", "disk"):
            continue
        root = f"{pv.kind}/{pv.name}"
        # With an fsGroup the kubelet makes volumes group-owned, setgid and group-accessible.
        root_mode = pv.root_mode | (0o2000 | (0o550 if pv.read_only else 0o770) if fs_group else 0)
        tar.dir(root, root_mode, gid)
        rv = by_name.get(pv.name)
        if rv is None:
            continue
        # The kubelet's layout (atomic_writer.py): the files in a timestamped directory that
        # `..data` names, a symlink per top-level name, so that updates swap them in one rename.
        data_dir = f"{root}/{atomic_writer.new_dir_name()}"
        tar.dir(data_dir, _DIR_MODE | (0o2550 if fs_group else 0), gid)
        for path, item in payload(rv, fs_group=fs_group).items():
            for parent in _parents(path):
                tar.dir(f"{data_dir}/{parent}", _DIR_MODE | (0o2550 if fs_group else 0), gid)
            tar.file(f"{data_dir}/{path}", item.data, item.mode, gid)
        tar.symlink(f"{root}/{atomic_writer.DATA}", data_dir.rsplit("/", 1)[1])
        for top in sorted({f.path.split("/", 1)[0] for f in rv.files}):
            tar.symlink(f"{root}/{top}", f"{atomic_writer.DATA}/{top}")
    for c in [*spec.initContainers, *spec.containers]:
        for m in c.volumeMounts:
            target = planned.get(m.name)
            if target is None or target.kind not in ("mem", "disk") or not m.subPath:
                continue
            pv = target
            sub = m.subPath.strip("/")
            existing = by_name.get(pv.name)
            if existing is not None and any(f.path == sub or f.path.startswith(sub + "/") for f in existing.files):
                continue
            mode = pv.root_mode | (0o2000 if fs_group else 0)
            for parent in [*_parents(sub), sub]:
                tar.dir(f"{pv.kind}/{pv.name}/{parent}", mode, gid)
    for path in termination.files(spec):
        tar.file(f"disk/{path}", b"", 0o666)
    for claim in new_claims:
        tar.dir(f"pvc/{claim}", 0o777)
    marker_area = "mem" if any(p.kind == "mem" for p in planned.values()) else "disk"
    if any(p.kind in ("mem", "disk") for p in planned.values()):
        tar.file(f"{marker_area}/{naming.POPULATED_MARKER}", b"", 0o600)
    return tar.close()


def marker_path(planned: dict[str, PlannedVolume]) -> str | None:
    """Infra path of the population marker (None: the pod has no private volume)."""
    kinds = {p.kind for p in planned.values()}
    if "mem" in kinds:
        return f"{naming.INFRA_MEM}/{naming.POPULATED_MARKER}"
    if "disk" in kinds:
        return f"{naming.INFRA_DISK}/{naming.POPULATED_MARKER}"
    return None
