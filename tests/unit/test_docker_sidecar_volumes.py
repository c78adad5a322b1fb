"""Volume planning: where each pod volume lives, the tar that fills it, the mounts (pure)."""

from __future__ import annotations

import base64
import io
import tarfile
from typing import Any

from kod import wire
from sidecars.docker import naming, volumes
from sidecars.docker.settings import PolicySettings

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


def _read(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        member = tf.extractfile(name)
        assert member is not None
        return member.read()


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
    by_name = {e.name.rstrip("/"): e for e in _entries(raw)}
    assert _read(raw, "mem/sec/token") == b"\x00\xffbinary\n"
    assert by_name["mem/sec/token"].mode == 0o400
    assert by_name["mem/sec/nested/dir/key"].mode == 0o640
    assert by_name["mem/sec/nested"].isdir() and by_name["mem/sec/nested/dir"].mode == 0o755
    assert by_name["mem/cm/app.conf"].mode == 0o644
    assert by_name["mem/sec"].mode == 0o1777 and by_name["mem/cm"].mode == 0o777
    assert by_name["disk/scratch"].mode == 0o777 and by_name["mem/fast"].mode == 0o777
    assert by_name["disk/scratch/a/b"].isdir() and by_name["disk/scratch/a/b"].mode == 0o777
    assert by_name["pvc/home"].mode == 0o777
    assert all(e.uid == 0 and e.gid == 0 for e in by_name.values())
    # The marker is the last entry: its presence proves the rest was extracted.
    assert _entries(raw)[-1].name == f"mem/{naming.POPULATED_MARKER}"
    assert volumes.marker_path(planned) == f"{naming.INFRA_MEM}/{naming.POPULATED_MARKER}"


def test_fs_group_makes_volumes_group_owned_and_readable_like_the_kubelet() -> None:
    s = spec([{"name": "sec", "secret": {"secretName": "s"}}, {"name": "e", "emptyDir": {}}], [],
             securityContext={"fsGroup": 2000})
    planned = volumes.plan(s, POLICY)
    raw = volumes.population_tar(s, planned, [wire.ResolvedVolume(name="sec", defaultMode=0o400, files=[
        wire.FileItem(path="k", data=b64(b"v"))])])
    by_name = {e.name.rstrip("/"): e for e in _entries(raw)}
    assert by_name["mem/sec/k"].gid == 2000 and by_name["mem/sec/k"].mode == 0o440
    assert by_name["disk/e"].gid == 2000 and by_name["disk/e"].mode & 0o2000


def test_containers_bind_their_volume_directories() -> None:
    mounts = [
        {"name": "sec", "mountPath": "/s"},
        {"name": "cm", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
        {"name": "scratch", "mountPath": "/w", "readOnly": True},
        {"name": "data", "mountPath": "/home"},
        {"name": "data", "mountPath": "/docs", "subPath": "Documents"},
        {"name": "x11", "mountPath": "/tmp/.X11-unix", "mountPropagation": "HostToContainer"},
        {"name": "dri", "mountPath": "/dev/dri"},
    ]
    s = spec(ALL_KINDS, mounts)
    planned = volumes.plan(s, POLICY)
    loc = volumes.Locations(mem=("m", "/var/lib/docker/volumes/m/_data"), disk=("d", "/var/lib/docker/volumes/d/_data"),
                            pvcs={"home": ("kod-pvc_ns_home", "/var/lib/docker/volumes/kod-pvc_ns_home/_data")})
    cm = volumes.container_mounts(s.containers[0], planned, loc)
    by_target = {m["Target"]: m for m in cm.mounts}
    assert by_target["/s"] == {"Type": "bind", "Source": "/var/lib/docker/volumes/m/_data/sec", "Target": "/s",
                               "ReadOnly": True, "BindOptions": {"Propagation": "rslave"}}
    assert by_target["/etc/app.conf"]["Source"].endswith("/m/_data/cm/app.conf") and by_target["/etc/app.conf"]["ReadOnly"]
    assert by_target["/w"]["Source"].endswith("/d/_data/scratch") and by_target["/w"]["ReadOnly"]
    assert by_target["/home"] == {"Type": "volume", "Source": "kod-pvc_ns_home", "Target": "/home", "ReadOnly": False,
                                  "VolumeOptions": {"NoCopy": True}}
    assert by_target["/docs"]["Source"].endswith("kod-pvc_ns_home/_data/Documents")
    assert by_target["/tmp/.X11-unix"]["Source"] == "/tmp/.X11-unix"
    assert by_target["/tmp/.X11-unix"]["BindOptions"] == {"Propagation": "rslave"}
    assert cm.devices == [{"PathOnHost": "/dev/dri", "PathInContainer": "/dev/dri", "CgroupPermissions": "rwm"}]
    assert set(cm.host_access) == {"/tmp/.X11-unix", "/dev/dri"}
    subs = [(pv.name, sub) for pv, sub in volumes.writable_subpaths(s.containers[0], planned)]
    assert subs == [("data", "Documents")]  # the ConfigMap subPath is ours, read-only: no check


def test_infra_mounts_private_volumes_and_claims() -> None:
    loc = volumes.Locations(mem=("m", "/x/m"), pvcs={"home": ("kod-pvc_ns_home", "/x/h")})
    targets = {m["Target"]: m["Source"] for m in volumes.infra_mounts(loc)}
    assert targets == {naming.INFRA_MEM: "m", f"{naming.INFRA_PVC}/home": "kod-pvc_ns_home"}
