"""Support for the Docker sidecar's end-to-end tests (tests/e2e/test_docker_sidecar*.py): the
test images, pod request builders, and a client that waits on the sidecar's own watch stream.

Every sidecar a test starts has a name of its own (`t-<random>`), which labels every Docker object
it creates; cleanup removes exactly those, so tests never touch the desktop's real pods."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kod import wire
from kod.http import ApiClient
from sidecars.docker import naming, network

ENTRYPOINT_IMAGE = "kod-test/entrypoint:0.1.0"
ENTRYPOINT_CONTEXT = Path(__file__).resolve().parents[1] / "images" / "entrypoint"
TESTBOX = "kod/testbox:0.1.0"
PAUSE = "kod/pause:3.10"


def build_test_images(docker: Any, localenv_config: Any) -> None:
    """kod/pause and kod/testbox (localenv builds them from images/), and the entrypoint image."""
    from localenv import cluster_images
    from localenv.paths import paths_for

    logs_dir = paths_for(localenv_config).logs_dir
    cluster_images.ensure(cluster_images.PAUSE, logs_dir)
    cluster_images.ensure(cluster_images.TESTBOX, logs_dir)
    docker.images.build(path=str(ENTRYPOINT_CONTEXT), tag=ENTRYPOINT_IMAGE, buildargs={"BASE": TESTBOX}, rm=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def container(name: str, script: str | None = None, **extra: Any) -> dict[str, Any]:
    """A container of the test box; `script` runs with sh -c."""
    c: dict[str, Any] = {"name": name, "image": TESTBOX, **extra}
    if script is not None:
        c["command"] = ["sh", "-c", script]
    return c


@dataclass
class SidecarClient:
    """A running sidecar (in-process or a subprocess) and what tests do with it."""

    api: ApiClient
    name: str
    namespace: str
    docker: Any
    created: list[tuple[str, str]] = field(default_factory=list)

    def request(self, pod_name: str, containers: list[dict[str, Any]], *, uid: str | None = None,
                contents: list[dict[str, Any]] | None = None, resolved: list[dict[str, Any]] | None = None,
                claims: dict[str, str] | None = None, **spec: Any) -> wire.PodCreateRequest:
        """A create request: `spec` are PodSpec fields (restartPolicy defaults to Never),
        `contents` the resolved volume contents, `resolved` the resolved containers. Every claim
        the pod mounts is confirmed as the virtual kubelet would, with a uid derived from its
        name (`claims` gives other uids: a claim made again)."""
        spec.setdefault("restartPolicy", "Never")
        confirmed = dict(claims or {})
        for v in spec.get("volumes") or []:
            if "persistentVolumeClaim" in v:
                name = v["persistentVolumeClaim"]["claimName"]
                confirmed.setdefault(name, str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.namespace}/{name}")))
        body = {
            "pod": {
                "metadata": {"name": pod_name, "namespace": self.namespace, "uid": uid or str(uuid.uuid4())},
                "spec": {"containers": containers, **spec},
            },
            "containers": resolved or [],
            "volumes": contents or [],
            "claims": [{"name": n, "uid": u} for n, u in confirmed.items()],
        }
        return wire.PodCreateRequest.model_validate(body)

    async def create(self, req: wire.PodCreateRequest) -> wire.PodStatus:
        self.created.append((req.pod.metadata.namespace, req.pod.metadata.name))
        return await self.api.request("POST", "/v1/pods", body=req, model=wire.PodStatus, timeout=120)

    async def get(self, name: str) -> wire.PodStatus:
        return await self.api.request("GET", f"/v1/pods/{self.namespace}/{name}", model=wire.PodStatus)

    async def delete(self, name: str, grace: int | None = 0, uid: str | None = None) -> wire.PodStatus:
        params: dict[str, Any] = {"gracePeriodSeconds": grace, "uid": uid}
        return await self.api.request(
            "DELETE", f"/v1/pods/{self.namespace}/{name}", params=params, model=wire.PodStatus, timeout=120
        )

    async def logs(self, name: str, container_name: str, **opts: Any) -> str:
        chunks = [c async for c in self.api.stream(
            "GET", f"/v1/pods/{self.namespace}/{name}/containers/{container_name}/logs", params=opts)]
        return b"".join(chunks).decode()

    async def wait(self, name: str, cond: Callable[[wire.PodStatus], bool], timeout: float = 90) -> wire.PodStatus:
        """The first status of pod `name` for which `cond` holds, from the watch stream."""
        last: list[wire.PodStatus] = []

        async def scan() -> wire.PodStatus:
            async for line in self.api.lines("/v1/watch"):
                event = wire.WatchEvent.model_validate_json(line)
                for st in [*(event.pods or []), *([event.pod] if event.pod else [])]:
                    if st.name == name and st.namespace == self.namespace and event.type != "DELETED":
                        last[:] = [st]
                        if cond(st):
                            return st
            raise AssertionError("the watch stream ended")

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"pod {name} did not reach the condition within {timeout}s; last status: "
                f"{last[0].model_dump_json(exclude_none=True) if last else None}"
            ) from None

    async def phase(self, name: str, *phases: str, timeout: float = 90) -> wire.PodStatus:
        return await self.wait(name, lambda s: s.phase in phases, timeout)

    # ---- Docker's view -----------------------------------------------------------------------

    def containers(self, uid: str | None = None) -> list[Any]:
        filters = [f"{naming.SIDECAR}={self.name}"] + ([f"io.kod.pod.uid={uid}"] if uid else [])
        return self.docker.containers.list(all=True, ignore_removed=True, filters={"label": filters})

    def volumes(self, uid: str | None = None) -> list[Any]:
        filters = [f"{naming.SIDECAR}={self.name}"] + ([f"io.kod.pod.uid={uid}"] if uid else [])
        return self.docker.volumes.list(filters={"label": filters})

    async def cleanup(self) -> None:
        """Delete every pod through the API, then remove whatever is left by label."""
        try:
            listed = await self.api.request("GET", "/v1/pods", model=wire.PodStatusList, timeout=30)
            await asyncio.gather(
                *(self.delete(p.name, 0, p.uid) for p in listed.items if p.namespace == self.namespace),
                return_exceptions=True,
            )
        except Exception:  # the sidecar may be dead (kill tests): the label sweep below does it
            pass
        sweep(self.docker, self.name)


def sweep(docker: Any, sidecar_name: str) -> None:
    """Remove every container, volume and pods' network labelled with `sidecar_name` (the test's
    own), and the network's host rules: each test sidecar makes a network of its own, and Docker
    has address pools for only about thirty."""
    flt = {"label": [f"{naming.SIDECAR}={sidecar_name}"]}
    for c in docker.containers.list(all=True, ignore_removed=True, filters=flt):
        c.remove(force=True)
    for v in docker.volumes.list(filters=flt):
        v.remove(force=True)
    for n in docker.networks.list(filters=flt):
        bridge = (n.attrs.get("Options") or {}).get("com.docker.network.bridge.name")
        n.remove()
        if bridge:
            network.remove_host_rules(n.name, bridge)


def terminated(st: wire.PodStatus, container_name: str) -> wire.ContainerStateTerminated | None:
    for cs in [*st.initContainerStatuses, *st.containerStatuses]:
        if cs.name == container_name:
            return cs.state.terminated
    return None


def status_of(st: wire.PodStatus, container_name: str) -> wire.ContainerStatus:
    for cs in [*st.initContainerStatuses, *st.containerStatuses]:
        if cs.name == container_name:
            return cs
    raise AssertionError(f"no status for container {container_name}")
