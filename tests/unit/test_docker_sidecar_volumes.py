"""Volume planning: where each pod volume lives, the tar that fills it, the mounts (pure)."""

from __future__ import annotations

import base64
import io
import tarfile
from typing import Any

import pytest

from kod import wire
from sidecars.docker import naming, volumes
from sidecars.docker.ceilings import Ceilings
from sidecars.docker.settings import HostPathEntry, LimitsSettings, PolicySettings

POLICY = PolicySettings()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def spec(volumes_: list[dict[str, Any]], mounts: list[dict[str, Any]], **extra: Any) -> wire.PodSpec:
    return wire.PodSpec.model_validate(
        {"containers": [{"name": "c", "image": "i", "volumeMounts": mounts}], "volumes": volumes_, **extra}
    )


ALL_KINDS = [
    {"name": "sec", "secret": {"secretName": "s"}},
    {"name": "cm", "configMap": {"name": "cm"}},
    {"name": "proj", "projected": {"sources": []}},
    {"name": "down", "downwardAPI": {"items": []}},
    {"name": "scratch", "emptyDir": {}},
    {"name": "fast", "emptyDir": {"medium": "Memory"}},
    {"name": "data", "persistentVolumeClaim": {"claimName": "home"}},
    {"name": "x11", "hostPath": {"path": "/tmp/.X11-unix"}},
    {"name": "dri", "hostPath": {"path": "/dev/dri"}},
]


def test_every_kind_has_its_place() -> None:
    planned = volumes.plan(spec(ALL_KINDS, []), POLICY)
    kinds = {name: p.kind for name, p in planned.items()}
    assert kinds == {"sec": "mem", "cm": "mem", "proj": "mem", "down": "mem", "fast": "mem",
                     "scratch": "disk", "data": "pvc", "x11": "host", "dri": "device"}
    assert all(planned[n].read_only for n in ("sec", "cm", "proj", "down"))
    assert volumes.areas(planned) == ["mem", "disk"]
    assert volumes.claims(planned) == ["home"]
    assert volumes.areas(volumes.plan(spec([{"name": "x11", "hostPath": {"path": "/tmp/.X11-unix"}}], []), POLICY)) == []


def _entries(tar_bytes: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        return tf.getmembers()


def _resolve(entries: list[tarfile.TarInfo], name: str) -> str:
    """The entry a container reads at `name`: through the kubelet layout's `<key> -> ..data/<key>`
    and `..data -> ..<timestamp>` symlinks of a content volume."""
    links = {e.name: e.linkname for e in entries if e.issym()}
    parts = name.split("/")
    for i in range(len(parts), 0, -1):
        head = "/".join(parts[:i])
        if head in links:
            base = head.rsplit("/", 1)[0]
            return _resolve(entries, "/".join([base, links[head], *parts[i:]]))
    return name


def _by_name(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    entries = _entries(tar_bytes)
    plain = {e.name.rstrip("/"): e for e in entries}
    out = dict(plain)
    for e in entries:
        if e.issym() and not e.name.endswith("/..data"):
            prefix = e.name
            for name, member in plain.items():
                target = _resolve(entries, prefix)
                if name == target or name.startswith(target + "/"):
                    out[prefix + name[len(target):]] = member
    return out


def _read(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        member = tf.extractfile(_resolve(tf.getmembers(), name))
        assert member is not None
        return member.read()


def test_content_volumes_have_the_kubelets_data_layout() -> None:
    s = spec([{"name": "cm", "configMap": {"name": "c"}}], [])
    raw = volumes.population_tar(s, volumes.plan(s, POLICY), [wire.ResolvedVolume(name="cm", files=[
        wire.FileItem(path="a", data=b64(b"1")), wire.FileItem(path="d/b", data=b64(b"2"))])])
    links = {e.name: e.linkname for e in _entries(raw) if e.issym()}
    data = links["mem/cm/..data"]
    assert data.startswith("..") and "/" not in data
    assert links["mem/cm/a"] == "..data/a" and links["mem/cm/d"] == "..data/d"
    assert _read(raw, "mem/cm/d/b") == b"2"


def test_contents_are_written_byte_for_byte_with_items_modes_and_directories() -> None:
    s = spec(ALL_KINDS, [{"name": "scratch", "mountPath": "/w", "subPath": "a/b"}])
    planned = volumes.plan(s, POLICY)
    contents = [
        wire.ResolvedVolume(name="sec", defaultMode=0o400, files=[
            wire.FileItem(path="token", data=b64(b"\x00\xffbinary\n")),
            wire.FileItem(path="nested/dir/key", data=b64(b"k"), mode=0o640),
        ]),
        wire.ResolvedVolume(name="cm", files=[wire.FileItem(path="app.conf", data=b64(b"a=1\n"))]),
    ]
    raw = volumes.population_tar(s, planned, contents, new_claims=["home"])
    by_name = _by_name(raw)
    assert _read(raw, "mem/sec/token") == b"\x00\xffbinary\n"
    assert by_name["mem/sec/token"].mode == 0o400
    assert by_name["mem/sec/nested/dir/key"].mode == 0o640
    assert by_name["mem/sec/nested"].isdir() and by_name["mem/sec/nested/dir"].mode == 0o755
    assert by_name["mem/cm/app.conf"].mode == 0o644
    assert by_name["mem/sec"].mode == 0o1777 and by_name["mem/cm"].mode == 0o777
    assert by_name["disk/scratch"].mode == 0o777 and by_name["mem/fast"].mode == 0o777
    assert by_name["disk/scratch/a/b"].isdir() and by_name["disk/scratch/a/b"].mode == 0o777
    assert by_name["pvc/home"].mode == 0o777
    assert all(e.uid == 0 and e.gid == 0 for e in _entries(raw))
    # The marker is the last entry: its presence proves the rest was extracted.
    assert _entries(raw)[-1].name == f"mem/{naming.POPULATED_MARKER}"
    assert volumes.marker_path(planned) == f"{naming.INFRA_MEM}/{naming.POPULATED_MARKER}"


def test_fs_group_makes_volumes_group_owned_and_readable_like_the_kubelet() -> None:
    s = spec([{"name": "sec", "secret": {"secretName": "s"}}, {"name": "e", "emptyDir": {}}], [],
             securityContext={"fsGroup": 2000})
    planned = volumes.plan(s, POLICY)
    raw = volumes.population_tar(s, planned, [wire.ResolvedVolume(name="sec", defaultMode=0o400, files=[
        wire.FileItem(path="k", data=b64(b"v"))])])
    by_name = _by_name(raw)
    assert by_name["mem/sec/k"].gid == 2000 and by_name["mem/sec/k"].mode == 0o440
    assert by_name["disk/e"].gid == 2000 and by_name["disk/e"].mode & 0o2000


def test_containers_bind_their_volume_directories() -> None:
    mounts = [
        {"name": "sec", "mountPath": "/s"},
        {"name": "cm", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
        {"name": "scratch", "mountPath": "/w", "readOnly": True},
        {"name": "data", "mountPath": "/home"},
        {"name": "data", "mountPath": "/docs", "subPath": "Documents"},
        {"name": "x11", "mountPath": "/tmp/.X11-unix", "mountPropagation": "HostToContainer", "readOnly": True},
        {"name": "dri", "mountPath": "/dev/dri"},
        {"name": "scratch", "mountPath": "/cache", "subPath": "cache"},
    ]
    s = spec(ALL_KINDS, mounts)
    planned = volumes.plan(s, POLICY)
    c = s.containers[0]
    loc = volumes.Locations(mem=("m", "/var/lib/docker/volumes/m/_data"), disk=("d", "/var/lib/docker/volumes/d/_data"),
                            pvcs={"home": ("kod-pvc_ns_home", "/var/lib/docker/volumes/kod-pvc_ns_home/_data")})
    # Host paths and subPaths of writable volumes are staged; the sidecar's own contents are not.
    wanted = [j for j, m in enumerate(c.volumeMounts) if volumes.needs_staging(m, planned[m.name])]
    assert wanted == [4, 5, 6, 7]
    staged = {j: f"/run/kod/docker-sidecar/t/u-1/k{j}" for j in wanted}
    cm = volumes.container_mounts(c, planned, loc, staged)
    by_target = {m["Target"]: m for m in cm.mounts}
    assert by_target["/s"] == {"Type": "bind", "Source": "/var/lib/docker/volumes/m/_data/sec", "Target": "/s",
                               "ReadOnly": True, "BindOptions": {"Propagation": "rslave"}}
    assert by_target["/etc/app.conf"]["Source"].endswith("/m/_data/cm/app.conf") and by_target["/etc/app.conf"]["ReadOnly"]
    assert by_target["/w"]["Source"].endswith("/d/_data/scratch") and by_target["/w"]["ReadOnly"]
    assert by_target["/home"] == {"Type": "volume", "Source": "kod-pvc_ns_home", "Target": "/home", "ReadOnly": False,
                                  "VolumeOptions": {"NoCopy": True}}
    for target, j, ro in (("/docs", 4, False), ("/tmp/.X11-unix", 5, True), ("/cache", 7, False)):
        assert by_target[target] == {"Type": "bind", "Source": staged[j], "Target": target, "ReadOnly": ro,
                                     "BindOptions": {"Propagation": "rprivate"}}
    assert cm.devices == [{"PathOnHost": staged[6], "PathInContainer": "/dev/dri", "CgroupPermissions": "rw"}]
    assert set(cm.host_access) == {"/tmp/.X11-unix", "/dev/dri"}
    with pytest.raises(LookupError, match="not staged"):
        volumes.container_mounts(c, planned, loc, {})


def test_host_paths_are_read_only_unless_the_entry_is_writable() -> None:
    pol = PolicySettings(host_paths=[HostPathEntry(path="/srv/ro"), HostPathEntry(path="/srv/rw", writable=True)])
    s = spec([{"name": "ro", "hostPath": {"path": "/srv/ro"}}, {"name": "rw", "hostPath": {"path": "/srv/rw"}}],
             [{"name": "ro", "mountPath": "/a"}, {"name": "rw", "mountPath": "/b"}])
    planned = volumes.plan(s, pol)
    ro, rw = s.containers[0].volumeMounts
    assert volumes.mount_read_only(ro, planned["ro"]) and not volumes.mount_read_only(rw, planned["rw"])
    assert planned["ro"].host_kind == "directory" and not planned["ro"].host_writable


def test_the_pods_tmpfs_is_bounded_by_its_contents_and_memory_empty_dirs() -> None:
    ceilings = Ceilings.resolve(LimitsSettings(default_memory="256Mi"), node_memory=None, node_cpu_millis=None)
    s = wire.PodSpec.model_validate({
        "containers": [
            {"name": "a", "image": "i", "volumeMounts": [{"name": "fast", "mountPath": "/f"}],
             "resources": {"limits": {"memory": "512Mi"}}},
            {"name": "b", "image": "i", "volumeMounts": [{"name": "fast", "mountPath": "/f"},
                                                          {"name": "sized", "mountPath": "/s"}]},
        ],
        "volumes": [{"name": "fast", "emptyDir": {"medium": "Memory"}},
                    {"name": "sized", "emptyDir": {"medium": "Memory", "sizeLimit": "10Mi"}},
                    {"name": "sec", "secret": {"secretName": "s"}}],
    })
    planned = volumes.plan(s, POLICY)
    contents = [wire.ResolvedVolume(name="sec", files=[wire.FileItem(path="k", data=b64(b"x" * 5000))])]
    size = volumes.memory_area_size(s, planned, contents, ceilings)
    # fast: the largest limit of its containers (512Mi), sized: its sizeLimit, the file: 2 pages + 1,
    # twice (a live update holds the old and the new files for an instant).
    assert size == 512 * 2**20 + 10 * 2**20 + 2 * 3 * 4096 + 2**20
    capped = volumes.memory_area_size(s, planned, contents, ceilings, cap="64Mi")
    assert capped == 64 * 2**20 + 2 * 3 * 4096 + 2**20


def test_infra_mounts_private_volumes_and_claims() -> None:
    loc = volumes.Locations(mem=("m", "/x/m"), pvcs={"home": ("kod-pvc_ns_home", "/x/h")})
    targets = {m["Target"]: m["Source"] for m in volumes.infra_mounts(loc)}
    assert targets == {naming.INFRA_MEM: "m", f"{naming.INFRA_PVC}/home": "kod-pvc_ns_home"}
