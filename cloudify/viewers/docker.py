"""Docker run mode: cloudify runs the viewer image in the local Docker engine itself.

The session's key, known_hosts line, VNC password and X cookie are copied into the container
(put_archive) before it starts: they never touch the desktop's disk. The container gets the X
socket directory and the PulseAudio socket's directory and nothing else of the host: no
capabilities, no new privileges, its own network and IPC namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import ipaddress
import socket
import struct
import tarfile
import time
from pathlib import Path
from typing import Any

from kod import apps, errors, labels

from cloudify import manifests
from cloudify import names as n
from cloudify.manifests import SessionPlan, Target
from cloudify.viewers.base import viewer_failure

#: Seconds the viewer gets to end after a stop request.
STOP_GRACE = 2


def docker_client(url: str | None) -> Any:
    """A Docker SDK client; Unavailable (with what to do) when the engine does not answer."""
    import docker  # imported here: only the docker run mode (and gc) need it

    try:
        client = docker.DockerClient(base_url=url) if url else docker.from_env()
        client.ping()
    except Exception as exc:  # the SDK raises DockerException, requests' and socket errors
        raise errors.Unavailable(
            f"cannot reach the Docker engine: {exc}", hint="start Docker (`python -m localenv up`), or use -r native"
        ) from exc
    return client


def _tar(files: dict[str, tuple[bytes, int]], uid: int) -> bytes:
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs: set[str] = set()
        for path in files:
            parts = Path(path).parent.parts
            for i in range(1, len(parts) + 1):
                dirs.add(str(Path(*parts[:i])))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            if d == str(Path(next(iter(files))).parent):
                info.mode, info.uid, info.gid = 0o700, uid, uid
            tar.addfile(info)
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_uid(client: Any, image: str) -> int:
    """The uid the image runs as (its USER, when numeric), so the copied key is its own."""
    try:
        user = (client.images.get(image).attrs.get("Config", {}).get("User") or "").split(":")[0]
    except Exception:
        return apps.APP_UID
    return int(user) if user.isdigit() else (0 if user in ("", "root") else apps.APP_UID)


class DockerViewer:
    kind = "docker"

    def __init__(
        self,
        client: Any,
        plan: SessionPlan,
        *,
        display: str,
        pulse_dir: str | None,
        pulse_socket_name: str,
        xauthority: bytes | None,
        groups: list[int] | None = None,
        on_container: Any = None,
    ) -> None:
        self.client, self.plan, self.display = client, plan, display
        self.pulse_dir, self.pulse_socket_name, self.xauthority = pulse_dir, pulse_socket_name, xauthority
        self.groups = list(groups or [])
        self._container: Any = None
        self._on_container = on_container
        self._exit: asyncio.Future[int] | None = None

    def _files(self) -> dict[str, tuple[bytes, int]]:
        creds, base = self.plan.credentials, apps.VIEWER_SECRET_DIR.lstrip("/")
        files = {
            f"{base}/{manifests.K_CLIENT_KEY}": (creds.client.private.encode(), 0o600),
            f"{base}/{manifests.K_KNOWN_HOSTS}": (creds.known_hosts().encode(), 0o644),
            f"{base}/{manifests.K_VNC_PASSWORD}": (creds.vnc_password.encode(), 0o600),
        }
        if self.xauthority:
            files[f"{base}/{manifests.K_XAUTHORITY}"] = (self.xauthority, 0o600)
        return files

    def container_config(self, target: Target) -> dict[str, Any]:
        """The keyword arguments of `containers.create` (also what the tests inspect)."""
        names = self.plan.names
        env = manifests.viewer_env(
            self.plan, target, display=self.display,
            pulse_socket=f"{manifests.VIEWER_PULSE_DIR}/{self.pulse_socket_name}" if self.pulse_dir else None,
            secret_dir=apps.VIEWER_SECRET_DIR,
            xauthority=f"{apps.VIEWER_SECRET_DIR}/{manifests.K_XAUTHORITY}" if self.xauthority else None,
        )
        volumes = {manifests.X11_DIR: {"bind": manifests.X11_DIR, "mode": "rw"}}
        if self.pulse_dir:
            volumes[self.pulse_dir] = {"bind": manifests.VIEWER_PULSE_DIR, "mode": "rw"}
        return {
            "image": self.plan.viewer_image,
            "name": names.container,
            "environment": env,
            "volumes": volumes,
            "labels": {
                labels.D_SESSION: names.session,
                labels.D_MANAGED_BY: n.D_MANAGED_BY_CLOUDIFY,
                f"{labels.DOCKER_PREFIX}.app": names.app.name,
                f"{labels.DOCKER_PREFIX}.user": names.user,
            },
            "group_add": [str(g) for g in self.groups],
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "detach": True,
            "stdin_open": False,
            "tty": False,
        }

    async def start(self, target: Target) -> None:
        await asyncio.to_thread(self._start_sync, target)
        self._exit = asyncio.ensure_future(asyncio.to_thread(self._wait_sync))

    def _start_sync(self, target: Target) -> None:
        config = self.container_config(target)
        uid = image_uid(self.client, config["image"])
        self._container = self.client.containers.create(**config)
        if self._on_container:
            self._on_container(self._container.name)
        if not self._container.put_archive("/", _tar(self._files(), uid)):
            raise errors.Internal("could not copy the session's keys into the viewer container")
        self._container.start()

    async def address(self) -> str:
        """The container's IPv4 address on its network: the only client cloudify's forwarders
        accept from this mode (Unavailable when it has none)."""
        def read() -> str:
            self._container.reload()
            net = self._container.attrs.get("NetworkSettings") or {}
            found = net.get("IPAddress") or next(
                (n.get("IPAddress") for n in (net.get("Networks") or {}).values() if n.get("IPAddress")), "")
            return str(found or "")

        found = await asyncio.to_thread(read)
        if not found:
            raise errors.Unavailable("the viewer container has no network address (it ended at once?)",
                                     hint="see its log: `docker logs " + str(self._container.name) + "`")
        return found

    def _wait_sync(self) -> int:
        result = self._container.wait()
        return int(result.get("StatusCode", 1))

    async def wait_running(self, timeout: float) -> str:
        # `start` returns once the engine started it: it runs (or already ended, which
        # wait_done reports with its exit code and log).
        return "in local Docker"

    async def wait_done(self) -> int:
        assert self._exit is not None
        code = await asyncio.shield(self._exit)
        failure = viewer_failure(code, await asyncio.to_thread(self.logs_tail) if code else "")
        if failure is not None:
            raise failure
        return code

    def logs_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(Exception):
            return str(self._container.logs(tail=lines).decode(errors="replace")).rstrip()
        return ""

    async def stop(self) -> None:
        if self._container is None:
            return
        await asyncio.to_thread(remove_container, self._container)
        if self._exit is not None and not self._exit.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._exit), STOP_GRACE + 3)


def remove_container(container: Any) -> None:
    """Stop (briefly) and remove a container; fine when it is already gone."""
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.stop(timeout=STOP_GRACE)
    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True)


def docker_gateway(client: Any) -> str | None:
    """The address of this host on Docker's default bridge: where a container reaches a
    listener of cloudify's (the port-forward). The network's gateway when the engine reports it,
    else the bridge interface's address, else the subnet's first address (Docker's default)."""
    try:
        attrs = client.networks.get("bridge").attrs
    except Exception:  # noqa: BLE001 - no engine, no bridge
        return None
    configs = attrs.get("IPAM", {}).get("Config") or []
    for cfg in configs:
        if cfg.get("Gateway"):
            return str(cfg["Gateway"]).split("/")[0]
    bridge = (attrs.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    address = interface_address(bridge)
    if address:
        return address
    for cfg in configs:
        if cfg.get("Subnet"):
            with contextlib.suppress(ValueError):
                return str(next(ipaddress.ip_network(cfg["Subnet"], strict=False).hosts()))
    return None


def interface_address(name: str) -> str | None:
    """The IPv4 address of a network interface (SIOCGIFADDR), or None."""
    SIOCGIFADDR = 0x8915  # noqa: N806 - the ioctl's name
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        return socket.inet_ntoa(packed[20:24])
    return None
