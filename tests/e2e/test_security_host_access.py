"""Attacks on the desktop's host access, each of which must fail, against the real Docker engine:
through a Docker sidecar of the test's own (when the test needs an allow-list of its own) and
through the real cluster and virtual node (with the desktop's default policy).

What a pod must never get, whatever it does: a host file or socket outside the allow-list. The
proof is a canary, a root-only file in the host's `/` with random contents, that no container
may ever show, and a file name no container may ever create in the host's `/`.

- symlinks planted in an allowed, writable directory by an init container (the attack of issue
  9), by a sibling pod, and by another local user (`nobody`) in the sticky /tmp/.X11-unix;
- hostPath tricks: `/`, `..`, trailing and double slashes, a path below an allowed one, devices;
- subPath of a claim while a container of another pod flips its directory and a symlink to `/`
  in a loop, over 1,000 containers that each check what they got;
- ConfigMap, Secret, projected and downward API paths (`..data`, `../x`, absolute);
- the container's own hardening (capabilities, no-new-privileges, seccomp, non-root with host
  paths, NVIDIA_* variables), and the policy checked again when a restarted sidecar adopts pods;
- the staging mounts are gone once their pods are, also after the sidecar was away.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from kod import errors, wire
from kod.http import ApiClient
from sidecars.docker.app import create_app
from sidecars.docker.settings import DockerSidecarSettings, HostPathEntry, PolicySettings, RestartSettings
from sidecars.docker.staging import mount_points
from tests.e2e.docker_sidecar_support import (
    PAUSE,
    SidecarClient,
    b64,
    build_test_images,
    container,
    status_of,
    sweep,
    terminated,
)
from tests.fixtures.virtual_node import VirtualNode

pytestmark = pytest.mark.e2e

TOKEN = "e2e-" + uuid.uuid4().hex
NOBODY = 65534
USER = {"runAsUser": 1000}  # pods with host paths run as non-root


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def sidecar_images(docker_engine: Any, localenv_config: Any) -> None:
    build_test_images(docker_engine, localenv_config)


MakeSidecar = Callable[..., Awaitable[SidecarClient]]


@pytest.fixture
async def make_sidecar(sidecar_images: None, docker_engine: Any, aiohttp_server: Any) -> AsyncIterator[MakeSidecar]:
    """Start a sidecar of the test's own (`name` again: the same sidecar restarted); every pod
    and object of every one is removed at the end."""
    made: list[SidecarClient] = []

    async def make(name: str | None = None, **settings: Any) -> SidecarClient:
        name = name or f"t-{uuid.uuid4().hex[:8]}"
        values: dict[str, Any] = {
            "restart": RestartSettings(initial_seconds=1, max_seconds=2),
            "default_grace_period_seconds": 2,
            "ready_timeout_seconds": 30,
            **settings,
        }
        server = await aiohttp_server(
            create_app(DockerSidecarSettings(name=name, token=SecretStr(TOKEN), infra_image=PAUSE, **values))
        )
        client = SidecarClient(api=ApiClient(f"http://127.0.0.1:{server.port}", TOKEN, timeout=120), name=name,
                               namespace=f"ns-{name}", docker=docker_engine)
        client.server = server  # type: ignore[attr-defined]
        made.append(client)
        return client

    yield make
    for client in reversed(made):
        try:
            await client.cleanup()
        finally:
            await client.api.close()


@dataclass(frozen=True)
class Canary:
    """A root-only file in the host's `/`, and a name no container may create there."""

    path: Path
    secret: str
    planted: Path

    @property
    def name(self) -> str:
        return self.path.name


@pytest.fixture
def canary() -> Iterator[Canary]:
    tag = uuid.uuid4().hex[:10]
    c = Canary(path=Path(f"/kod-canary-{tag}"), secret=f"CANARY-{uuid.uuid4().hex}", planted=Path(f"/kod-planted-{tag}"))
    c.path.write_text(c.secret)
    c.path.chmod(0o600)
    yield c
    c.path.unlink(missing_ok=True)
    assert not c.planted.exists(), f"a container created {c.planted} on the host"
    c.planted.unlink(missing_ok=True)


@pytest.fixture
def share() -> Iterator[Path]:
    """A host directory of the desktop user (uid 1000) that the test's policy lets pods write."""
    d = Path(f"/var/tmp/kod-share-{uuid.uuid4().hex[:8]}")
    d.mkdir(mode=0o755)
    os.chown(d, 1000, 1000)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(code: str) -> None:
    """Run Python `code` as another local user of this machine (nobody), with the system's
    Python (the test's virtualenv is in root's home, which nobody may not enter)."""
    subprocess.run(["/usr/bin/python3", "-c", code], user=NOBODY, group=NOBODY, extra_groups=[], check=True,
                   timeout=30, cwd="/")


def waiting(st: wire.PodStatus, name: str) -> wire.ContainerStateWaiting | None:
    return status_of(st, name).state.waiting


def host_path(name: str, path: str, type_: str | None = None) -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, **({"type": type_} if type_ else {})}}


def staged_mounts(sidecar: SidecarClient, uid: str | None = None) -> list[str]:
    root = f"/run/kod/docker-sidecar/{sidecar.name}/" + (f"{uid}/" if uid else "")
    return [m for m in mount_points() if m.startswith(root)]


# ------------------------------------------------------------ symlinks planted in allowed directories


async def test_a_symlink_an_init_container_plants_in_a_writable_allowed_directory_leads_nowhere(
    make_sidecar: MakeSidecar, canary: Canary, share: Path
) -> None:
    sc = await make_sidecar(policy=PolicySettings(host_paths=[HostPathEntry(path=str(share), writable=True, owners=[1000])]))
    plant = container("plant", "ln -s / /share/root && ln -s /etc /share/etc",
                      volumeMounts=[{"name": "share", "mountPath": "/share"}])
    # The pod of issue 9: an init container plants the link, a second hostPath "below" follows it.
    follow = container("main", f"cat /escape/{canary.name}; touch /escape/{canary.planted.name}",
                       volumeMounts=[{"name": "escape", "mountPath": "/escape"}])
    attack = sc.request("attack", [follow], initContainers=[plant], securityContext=USER,
                        volumes=[host_path("share", str(share)), host_path("escape", f"{share}/root")])
    with pytest.raises(errors.Forbidden) as info:
        await sc.create(attack)
    assert f"host path {share}/root is not in the allowed host paths" in str(info.value)
    assert "nothing below them" in str(info.value)
    assert sc.containers() == [] and sc.volumes() == []

    # Without the second hostPath, the links are followed inside the container: to its own `/`.
    look = container("main", f"cat /share/root/{canary.name} 2>&1; touch /share/root/{canary.planted.name} 2>&1; "
                     "cat /share/etc/hostname; echo done",
                     volumeMounts=[{"name": "share", "mountPath": "/share"}])
    req = sc.request("look", [look], initContainers=[plant], securityContext=USER, volumes=[host_path("share", str(share))])
    await sc.create(req)
    st = await sc.phase("look", "Succeeded", "Failed")
    out = await sc.logs("look", "main")
    assert (share / "root").is_symlink(), "the init container did plant the link"
    assert canary.secret not in out and "done" in out
    assert "No such file" in out
    assert not canary.planted.exists()
    assert socket.gethostname() not in out.split()  # the container's /etc/hostname, not the host's
    assert st.phase == "Succeeded"


async def test_a_symlink_a_sibling_pod_plants_is_refused_and_its_real_directory_is_not(
    make_sidecar: MakeSidecar, canary: Canary, share: Path
) -> None:
    # The owner allows the shared directory (writable) and every directory directly in it
    # (read-only, owned by root or uid 1000): like /run/kod/pulse and /run/kod/pulse/*.
    sc = await make_sidecar(policy=PolicySettings(host_paths=[
        HostPathEntry(path=str(share), writable=True, owners=[1000]), HostPathEntry(path=f"{share}/*", owners=[1000])]))
    planter = container("main", "mkdir /share/session && echo mine > /share/session/f && ln -s / /share/evil "
                        "&& mkdir /share/session/deeper && ln -s /etc /share/session/deeper/etc",
                        volumeMounts=[{"name": "share", "mountPath": "/share"}])
    await sc.create(sc.request("planter", [planter], securityContext=USER, volumes=[host_path("share", str(share))]))
    assert (await sc.phase("planter", "Succeeded", "Failed")).phase == "Succeeded"

    victim = container("main", f"ls /s; cat /s/{canary.name}", volumeMounts=[{"name": "s", "mountPath": "/s", "readOnly": True}])
    await sc.create(sc.request("victim", [victim], securityContext=USER, volumes=[host_path("s", f"{share}/evil")]))
    st = await sc.wait("victim", lambda s: (w := waiting(s, "main")) is not None and "symlink" in (w.message or ""))
    assert waiting(st, "main").reason == "CreateContainerConfigError"  # type: ignore[union-attr]
    await asyncio.sleep(3)  # it is tried again (back-off) and refused again: never started
    assert status_of(await sc.get("victim"), "main").state.waiting is not None
    assert [c.labels["io.kod.role"] for c in sc.containers(st.uid)] == ["infra"]

    # Below an allowed pattern is still not allowed (and would be a symlink anyway).
    with pytest.raises(errors.Forbidden):
        await sc.create(sc.request("deeper", [victim], securityContext=USER,
                                   volumes=[host_path("s", f"{share}/session/deeper/etc")]))
    # The sibling's real directory is what the pattern allows: it mounts, as it is.
    reader = container("main", "cat /s/f", volumeMounts=[{"name": "s", "mountPath": "/s", "readOnly": True}])
    await sc.create(sc.request("reader", [reader], securityContext=USER, volumes=[host_path("s", f"{share}/session")]))
    assert (await sc.phase("reader", "Succeeded", "Failed")).phase == "Succeeded"
    assert await sc.logs("reader", "main") == "mine\n"


async def test_what_another_local_user_plants_in_the_x11_socket_directory_is_never_mounted(
    make_sidecar: MakeSidecar, canary: Canary
) -> None:
    x11 = Path("/tmp/.X11-unix")
    x11.mkdir(mode=0o1777, exist_ok=True)
    display = f"X{900 + uuid.uuid4().int % 90}"
    evil = x11 / f"kod-evil-{uuid.uuid4().hex[:6]}"
    sock = x11 / display
    sc = await make_sidecar(policy=PolicySettings(host_paths=[
        HostPathEntry(path="/tmp/.X11-unix"), HostPathEntry(path=str(sock), type="socket")]))
    try:
        as_nobody(f"import os; os.symlink('/', {str(evil)!r})")
        # The directory itself is allowed: the link in it resolves inside the container.
        look = container("main", f"ls /x11/{evil.name}/ >/dev/null && cat /x11/{evil.name}/{canary.name} 2>&1; echo done",
                         volumeMounts=[{"name": "x11", "mountPath": "/x11", "readOnly": True}])
        await sc.create(sc.request("look", [look], securityContext=USER, volumes=[host_path("x11", str(x11), "Directory")]))
        assert (await sc.phase("look", "Succeeded", "Failed")).phase == "Succeeded"
        out = await sc.logs("look", "main")
        assert canary.secret not in out and "No such file" in out
        # The link itself is not an allowed path.
        with pytest.raises(errors.Forbidden, match="not in the allowed host paths"):
            await sc.create(sc.request("link", [look], securityContext=USER, volumes=[host_path("x11", str(evil))]))

        # An allowed socket name that nobody made a symlink (to the desktop's /etc/shadow):
        as_nobody(f"import os; os.symlink('/etc/shadow', {str(sock)!r})")
        use = container("main", "test -S /x && echo socket", volumeMounts=[{"name": "x", "mountPath": "/x", "readOnly": True}])
        await sc.create(sc.request("sym", [use], securityContext=USER, volumes=[host_path("x", str(sock), "Socket")]))
        st = await sc.wait("sym", lambda s: (w := waiting(s, "main")) is not None and "symlink" in (w.message or ""))
        assert "symlinks are never followed" in (waiting(st, "main").message or "")  # type: ignore[union-attr]
        await sc.delete("sym")
        # ... or a real socket of their own: another user's file in a shared sticky directory.
        sock.unlink()
        as_nobody(f"import socket; socket.socket(socket.AF_UNIX).bind({str(sock)!r})")
        await sc.create(sc.request("theirs", [use], securityContext=USER, volumes=[host_path("x", str(sock), "Socket")]))
        st = await sc.wait("theirs", lambda s: (w := waiting(s, "main")) is not None and "65534" in (w.message or ""))
        assert "another user's file" in (waiting(st, "main").message or "")  # type: ignore[union-attr]
        await sc.delete("theirs")
        # The real X server's socket (root's) is what the entry allows.
        sock.unlink()
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(sock))
        try:
            await sc.create(sc.request("real", [use], securityContext=USER, volumes=[host_path("x", str(sock), "Socket")]))
            assert (await sc.phase("real", "Succeeded", "Failed")).phase == "Succeeded"
            assert await sc.logs("real", "main") == "socket\n"
        finally:
            server.close()
    finally:
        evil.unlink(missing_ok=True)
        sock.unlink(missing_ok=True)


# -------------------------------------------------------------------------------- hostPath tricks


TRICKS = [
    ("/", None),
    ("/tmp/.X11-unix/..", None),
    ("/tmp/.X11-unix/../../etc", None),
    ("/tmp/.X11-unix/", None),
    ("//tmp/.X11-unix", None),
    ("/tmp//.X11-unix", None),
    ("/tmp/./.X11-unix", None),
    ("/tmp/.X11-unix/X0", "Socket"),      # below an allowed directory
    ("/run/kod/pulse/a/native", None),    # below an allowed pattern
    ("/run/kod", None),                   # above one
    ("/dev/sda", "BlockDevice"),
    ("/dev/mem", "CharDevice"),
    ("/dev/dri/../mem", "CharDevice"),
    ("/proc/1/root", None),
    ("/var/lib/docker", None),
]


@pytest.mark.timeout(300)
def test_host_path_tricks_through_the_cluster_are_all_refused(
    virtual_node: VirtualNode, owner_namespace: str, canary: Canary
) -> None:
    ns = owner_namespace
    created = {}
    api_refused = {}
    for i, (path, kind) in enumerate(TRICKS):
        name = f"trick-{i}"
        body = virtual_node.pod(
            name,
            [{"name": "main", "command": ["sh", "-c", f"cat /h/{canary.name} /h/etc/shadow; touch /h/{canary.planted.name}"],
              "volumeMounts": [{"name": "h", "mountPath": "/h", "readOnly": True}]}],
            securityContext=USER, volumes=[host_path("h", path, kind)],
        )
        proc = virtual_node.cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(body), check=False)
        if proc.returncode == 0:
            created[name] = path
        else:
            api_refused[path] = proc.stderr.strip()
    for name, path in created.items():
        pod = virtual_node.wait_phase(ns, name, "Failed", "Succeeded", "Running")
        st = pod["status"]
        assert st["phase"] == "Failed" and st.get("reason") == "Forbidden", (path, st)
        assert "hostPath" in st["message"], st["message"]
        assert virtual_node.containers(pod["metadata"]["uid"]) == [], f"{path}: something was created in Docker"
    for path, why in api_refused.items():
        assert "Invalid" in why or "invalid" in why, (path, why)
    # The desktop itself refused most of them (the API server only those with '..').
    assert len(created) >= len(TRICKS) - 3, api_refused


async def test_host_path_tricks_the_api_server_lets_through_or_not_are_refused_by_the_sidecar(
    make_sidecar: MakeSidecar,
) -> None:
    sc = await make_sidecar()
    for path, kind in TRICKS:
        c = container("main", "true", volumeMounts=[{"name": "h", "mountPath": "/h", "readOnly": True}])
        with pytest.raises(errors.Forbidden) as info:
            await sc.create(sc.request(f"t-{uuid.uuid4().hex[:6]}", [c], securityContext=USER,
                                       volumes=[host_path("h", path, kind)]))
        assert "hostPath" in str(info.value), path
    assert sc.containers() == [] and sc.volumes() == []


def test_a_root_container_is_never_given_a_host_path(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    mount = [{"name": "x11", "mountPath": "/x11", "readOnly": True}]
    asks_root = virtual_node.pod("asks-root", [{"name": "main", "command": ["id", "-u"], "volumeMounts": mount}],
                                 securityContext={"runAsUser": 0}, volumes=[host_path("x11", "/tmp/.X11-unix")])
    image_root = virtual_node.pod("image-root", [{"name": "main", "command": ["id", "-u"], "volumeMounts": mount}],
                                  volumes=[host_path("x11", "/tmp/.X11-unix")])
    as_user = virtual_node.pod("as-user", [{"name": "main", "command": ["sh", "-c", "id -u; ls -d /x11"], "volumeMounts": mount}],
                               securityContext=USER, volumes=[host_path("x11", "/tmp/.X11-unix")])
    virtual_node.create(ns, asks_root, image_root, as_user)
    pod = virtual_node.wait_phase(ns, "as-user", "Failed", "Succeeded")
    assert pod["status"]["phase"] == "Succeeded" and virtual_node.logs(ns, "as-user") == "1000\n/x11\n"
    pod = virtual_node.wait_phase(ns, "asks-root", "Failed", "Succeeded", "Running")
    assert pod["status"].get("reason") == "Forbidden" and "non-root uid" in pod["status"]["message"]
    pod = virtual_node.wait(ns, "image-root", lambda p: any(
        (cs.get("state") or {}).get("waiting", {}).get("reason") == "CreateContainerConfigError"
        for cs in p.get("status", {}).get("containerStatuses", [])), what="CreateContainerConfigError")
    message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert "would run as root" in message and "runAsUser" in message


def test_an_allowed_host_path_is_read_only_unless_its_entry_is_writable(
    virtual_node: VirtualNode, owner_namespace: str
) -> None:
    ns = owner_namespace
    name = f"kod-planted-{uuid.uuid4().hex[:8]}"
    planted = Path("/tmp/.X11-unix") / name
    write = ["sh", "-c", f"touch /x11/{name} 2>&1; echo done"]
    rw = virtual_node.pod("rw", [{"name": "main", "command": write, "volumeMounts": [{"name": "x11", "mountPath": "/x11"}]}],
                          securityContext=USER, volumes=[host_path("x11", "/tmp/.X11-unix")])
    ro = virtual_node.pod("ro", [{"name": "main", "command": write,
                                  "volumeMounts": [{"name": "x11", "mountPath": "/x11", "readOnly": True}]}],
                          securityContext=USER, volumes=[host_path("x11", "/tmp/.X11-unix")])
    virtual_node.create(ns, rw, ro)
    pod = virtual_node.wait_phase(ns, "rw", "Failed", "Succeeded", "Running")
    assert pod["status"].get("reason") == "Forbidden", pod["status"]
    assert "may only be mounted read-only" in pod["status"]["message"]
    assert virtual_node.containers(pod["metadata"]["uid"]) == []
    virtual_node.wait_phase(ns, "ro", "Failed", "Succeeded")
    assert "Read-only file system" in virtual_node.logs(ns, "ro")
    assert not planted.exists()


# --------------------------------------------------------------------------------- subPath race


RACE_PODS = 20
RACE_CONTAINERS = 50  # per pod: 1,000 containers, each a resolution of the subPath


@pytest.mark.timeout(600)
async def test_a_sub_path_a_racing_container_flips_to_a_symlink_never_reaches_the_host(
    make_sidecar: MakeSidecar, canary: Canary
) -> None:
    sc = await make_sidecar()
    claim = {"name": "race", "persistentVolumeClaim": {"claimName": f"race-{uuid.uuid4().hex[:6]}"}}
    # The racer: in the claim's volume, `d` is the directory (with a marker), then a symlink to
    # the host's / (were it followed), then nothing, in a tight loop of renames (GNU mv -T is
    # rename(2): each state appears atomically).
    flip = ("mkdir -p /vol/d && touch /vol/d/i-am-the-dir; "
            "while :; do mv -T /vol/d /vol/real 2>/dev/null; ln -sfn / /vol/link; mv -T /vol/link /vol/d 2>/dev/null; "
            "rm -f /vol/d 2>/dev/null; mv -T /vol/real /vol/d 2>/dev/null; done")
    await sc.create(sc.request("racer", [container("main", flip, volumeMounts=[{"name": "race", "mountPath": "/vol"}])],
                               securityContext=USER, volumes=[claim]))
    await sc.wait("racer", lambda s: status_of(s, "main").state.running is not None)
    # Each checker tells by its exit code what its subPath mount showed: 0 the directory,
    # 3 an empty directory (made by the sidecar in a moment `d` was missing), 42 the host; 128
    # (StartError) is a container whose checked directory the racer removed before it started.
    check = (f"if [ -e /mnt/{canary.name} ] || [ -e /mnt/etc/shadow ]; then exit 42; fi; "
             "if [ -e /mnt/i-am-the-dir ]; then exit 0; fi; [ -d /mnt ] && exit 3; exit 4")
    outcomes: dict[int, int] = {}
    refused_containers = 0
    sem = asyncio.Semaphore(2)

    async def victim(i: int) -> None:
        nonlocal refused_containers
        async with sem:
            name = f"victim-{i}"
            cs = [container(f"c{j}", check, volumeMounts=[{"name": "race", "mountPath": "/mnt", "subPath": "d"}])
                  for j in range(RACE_CONTAINERS)]
            await sc.create(sc.request(name, cs, securityContext=USER, volumes=[claim]))
            refused: set[str] = set()

            def done(st: wire.PodStatus) -> bool:
                for c in st.containerStatuses:
                    w = c.state.waiting
                    if w is not None and w.reason == "CreateContainerConfigError" and "symlink" in (w.message or ""):
                        refused.add(c.name)
                return st.phase in ("Succeeded", "Failed")

            st = await sc.wait(name, done, timeout=600)
            for c in st.containerStatuses:
                t = c.state.terminated
                assert t is not None, c
                if t.exitCode == 128:
                    # The checked directory was gone (renamed over) by the time runc bound it: the
                    # container never started, and says so, as on a kubelet.
                    assert t.reason == "StartError" and "error mounting" in (t.message or ""), t
                outcomes[t.exitCode] = outcomes.get(t.exitCode, 0) + 1
            refused_containers += len(refused)
            await sc.delete(name, grace=0)

    await asyncio.gather(*(victim(i) for i in range(RACE_PODS)))
    racer = await sc.get("racer")
    assert status_of(racer, "main").state.running is not None and status_of(racer, "main").restartCount == 0
    print(f"subPath race: outcomes by exit code {outcomes}, containers refused at least once: {refused_containers}")
    assert outcomes.get(42, 0) == 0, f"a container got the host: {outcomes}"
    assert sum(outcomes.values()) == RACE_PODS * RACE_CONTAINERS
    assert set(outcomes) <= {0, 3, 128}, outcomes
    assert outcomes.get(0, 0) > 0  # the race was real: the directory was there at times


# -------------------------------------------------------------- ConfigMap, Secret, projected paths


BAD_FILE_PATHS = ["..data/token", "../escape", "a/../../escape", "/etc/passwd", "./x", "a//b", "..x"]


async def test_content_volume_paths_that_could_leave_the_volume_are_refused(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar()
    for kind, source in (("secret", {"secretName": "s"}), ("configMap", {"name": "c"}),
                         ("projected", {"sources": []}), ("downwardAPI", {"items": []})):
        for path in BAD_FILE_PATHS:
            body = sc.request("bad", [container("main", "true", volumeMounts=[{"name": "v", "mountPath": "/v"}])],
                              volumes=[{"name": "v", kind: source}],
                              contents=[{"name": "v", "files": [{"path": "ok", "data": b64(b"x")}]}]).model_dump(
                                  mode="json", exclude_none=True)
            body["volumes"][0]["files"].append({"path": path, "data": b64(b"x")})
            with pytest.raises(errors.InvalidInput):
                await sc.api.request("POST", "/v1/pods", data=json.dumps(body).encode(), model=wire.PodStatus)
        for sub in ("..data", "..data/token", "../x", "/etc/passwd", "a/./b"):
            c = container("main", "true", volumeMounts=[{"name": "v", "mountPath": "/v", "subPath": sub}])
            body = sc.request("bad", [c], volumes=[{"name": "v", kind: source}],
                              contents=[{"name": "v", "files": [{"path": "k", "data": b64(b"x")}]}]).model_dump(
                                  mode="json", exclude_none=True)
            with pytest.raises(errors.InvalidInput, match="subPath"):
                await sc.api.request("POST", "/v1/pods", data=json.dumps(body).encode(), model=wire.PodStatus)
    body = sc.request("mode", [container("main", "true")], volumes=[{"name": "v", "secret": {"secretName": "s"}}],
                      contents=[{"name": "v", "files": [{"path": "k", "data": b64(b"x")}]}]).model_dump(mode="json")
    body["volumes"][0]["files"][0]["mode"] = 0o4755  # setuid
    with pytest.raises(errors.InvalidInput):
        await sc.api.request("POST", "/v1/pods", data=json.dumps(body).encode(), model=wire.PodStatus)
    assert sc.containers() == [] and sc.volumes() == []
    # A plain subPath of the sidecar's own read-only contents works, and is read-only.
    c = container("main", "cat /etc/app.conf; { echo x > /etc/app.conf; } 2>/dev/null || echo read-only",
                  volumeMounts=[{"name": "v", "mountPath": "/etc/app.conf", "subPath": "dir/app.conf"}])
    await sc.create(sc.request("good", [c], volumes=[{"name": "v", "configMap": {"name": "c"}}],
                               contents=[{"name": "v", "files": [{"path": "dir/app.conf", "data": b64(b"a=1\n")}]}]))
    assert (await sc.phase("good", "Succeeded", "Failed")).phase == "Succeeded"
    assert await sc.logs("good", "main") == "a=1\nread-only\n"


def test_the_api_server_already_refuses_dot_dot_keys_and_item_paths(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dots"}, "data": {"..data": "x"}}
    proc = virtual_node.cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(cm), check=False)
    assert proc.returncode != 0 and "..data" in proc.stderr
    pod = virtual_node.pod("items", [{"name": "main", "command": ["true"], "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                           volumes=[{"name": "v", "configMap": {"name": "c", "items": [{"key": "k", "path": "../x"}]}}])
    proc = virtual_node.cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(pod), check=False)
    assert proc.returncode != 0 and ".." in proc.stderr


# ---------------------------------------------------------------------------- containers hardening


KEPT_MASK = sum(1 << bit for bit in (0, 1, 3, 4, 5, 6, 7, 10))  # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID NET_BIND_SERVICE


def test_every_pod_on_the_desktop_is_confined(virtual_node: VirtualNode, owner_namespace: str) -> None:
    ns = owner_namespace
    script = ("grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
              "mknod /tmp/null c 1 3 2>&1 && echo MKNOD-WORKED; "
              "arping -c 1 -w 1 127.0.0.1 2>&1 | grep -qi 'not permitted' && echo NO-RAW-SOCKETS; true")
    virtual_node.create(ns, virtual_node.pod("confined", [{"name": "main", "command": ["sh", "-c", script]}]))
    virtual_node.wait_phase(ns, "confined", "Succeeded", "Failed")
    fields = dict(line.split(":\t", 1) for line in virtual_node.logs(ns, "confined").splitlines() if ":\t" in line)
    out = virtual_node.logs(ns, "confined")
    assert int(fields["CapBnd"], 16) == KEPT_MASK and int(fields["CapEff"], 16) == KEPT_MASK  # root, yet no NET_RAW
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"  # Docker's default filter
    assert "MKNOD-WORKED" not in out and "Operation not permitted" in out
    assert "NO-RAW-SOCKETS" in out


@pytest.mark.parametrize(
    ("name", "security", "field"),
    [
        ("seccomp", {"seccompProfile": {"type": "Unconfined"}}, "seccompProfile"),
        ("apparmor", {"appArmorProfile": {"type": "Unconfined"}}, "appArmorProfile"),
        ("proc", {"procMount": "Unmasked"}, "procMount"),
        ("netraw", {"capabilities": {"add": ["NET_RAW"]}}, "capabilities"),
        ("escalate", {"allowPrivilegeEscalation": True}, "allowPrivilegeEscalation"),
    ],
)
def test_loosening_a_container_is_refused_without_the_owners_setting(
    virtual_node: VirtualNode, owner_namespace: str, name: str, security: dict[str, Any], field: str
) -> None:
    ns = owner_namespace
    body = virtual_node.pod(name, [{"name": "main", "command": ["true"], "securityContext": security}])
    proc = virtual_node.cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(body), check=False)
    if proc.returncode != 0:  # the API server refused it first (Unmasked needs hostUsers: false there)
        assert field in proc.stderr, proc.stderr
        return
    pod = virtual_node.wait_phase(ns, name, "Failed", "Succeeded", "Running")
    assert pod["status"].get("reason") == "Forbidden" and field in pod["status"]["message"]
    assert virtual_node.containers(pod["metadata"]["uid"]) == []


async def test_nvidia_variables_reach_only_containers_granted_gpus(make_sidecar: MakeSidecar) -> None:
    sc = await make_sidecar()
    env = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}, {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "all"},
           {"name": "KEEP", "value": "1"}]
    await sc.create(sc.request("env", [container("main", "env | sort | grep -E '^(NVIDIA|KEEP)' ; true")],
                               resolved=[{"name": "main", "env": env}]))
    assert (await sc.phase("env", "Succeeded", "Failed")).phase == "Succeeded"
    assert await sc.logs("env", "main") == "KEEP=1\n"


async def test_a_restarted_sidecar_stops_the_pods_its_new_policy_refuses(make_sidecar: MakeSidecar) -> None:
    extra = Path(f"/var/tmp/kod-extra-{uuid.uuid4().hex[:6]}")
    extra.mkdir()
    try:
        before = await make_sidecar(policy=PolicySettings(host_paths=[HostPathEntry(path=str(extra))]))
        c = container("main", "exec sleep 3600", volumeMounts=[{"name": "e", "mountPath": "/e", "readOnly": True}])
        kept = container("main", "exec sleep 3600")
        await before.create(before.request("old-rules", [c], securityContext=USER, volumes=[host_path("e", str(extra))],
                                           restartPolicy="Always"))
        await before.create(before.request("fine", [kept], restartPolicy="Always"))
        for name in ("old-rules", "fine"):
            await before.wait(name, lambda s: status_of(s, "main").state.running is not None)
        await before.server.close()  # type: ignore[attr-defined]  # pods keep running meanwhile

        after = await make_sidecar(before.name)  # the default policy: that host path is not allowed
        after.namespace = before.namespace
        # Failed at once, and its container stopped (after its grace period).
        st = await after.wait("old-rules", lambda s: s.phase == "Failed" and terminated(s, "main") is not None)
        assert st.reason == "Forbidden" and st.message is not None
        assert "policy in force since the sidecar restarted" in st.message and str(extra) in st.message
        assert all(c.status != "running" for c in after.containers(st.uid) if c.labels["io.kod.role"] == "main")
        assert (await after.get("fine")).phase == "Running"
    finally:
        shutil.rmtree(extra, ignore_errors=True)


async def test_staging_mounts_go_with_their_pods_also_when_the_sidecar_was_away(
    make_sidecar: MakeSidecar, docker_engine: Any
) -> None:
    extra = Path(f"/var/tmp/kod-stage-{uuid.uuid4().hex[:6]}")
    extra.mkdir()
    try:
        policy = PolicySettings(host_paths=[HostPathEntry(path=str(extra))])
        first = await make_sidecar(policy=policy)
        c = container("main", "exec sleep 3600", volumeMounts=[{"name": "e", "mountPath": "/e", "readOnly": True}])
        one = first.request("one", [c], securityContext=USER, volumes=[host_path("e", str(extra))], restartPolicy="Always")
        two = first.request("two", [c], securityContext=USER, volumes=[host_path("e", str(extra))], restartPolicy="Always")
        for req in (one, two):
            await first.create(req)
            await first.wait(req.pod.metadata.name, lambda s: status_of(s, "main").state.running is not None)
        assert staged_mounts(first, one.pod.metadata.uid) and staged_mounts(first, two.pod.metadata.uid)
        await first.delete("two", grace=0)
        assert staged_mounts(first, two.pod.metadata.uid) == []  # a delete removes them

        await first.server.close()  # type: ignore[attr-defined]
        # While no sidecar runs, pod "one" vanishes from Docker (removed by hand).
        sweep(docker_engine, first.name)
        assert staged_mounts(first, one.pod.metadata.uid), "the staged mount outlived its pod so far"
        again = await make_sidecar(first.name, policy=policy)
        await again.api.request("GET", "/v1/pods", model=wire.PodStatusList)  # synced: collected
        assert staged_mounts(again) == []
        assert not Path(f"/run/kod/docker-sidecar/{first.name}/{one.pod.metadata.uid}").exists()
    finally:
        shutil.rmtree(extra, ignore_errors=True)

