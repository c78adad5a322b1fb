"""docker-compose.yaml brought up for real with Debian's docker-compose (1.29): the images built
under images/services, interlink answering ping through the published loopback port with the
Docker sidecar behind it, a pod run in the host's Docker engine through the stack, and nothing
left when the stack goes down.

The stack gets a project name, a sidecar name, a port and a token directory of its own, so it
never meets the desktop stack that other tests run on this machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kod import apps, errors
from kod.http import ApiClient
from kod.tokens import create_token_file
from kod.wire import NodeInfo, PodCreateRequest, PodStatus
from localenv import cluster_images
from localenv import settings as localenv_settings
from localenv.paths import paths_for
from tests.e2e.docker_sidecar_support import sweep

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"


@pytest.fixture(scope="session")
def docker_compose() -> str:
    """Debian's docker-compose (the `docker compose` plugin is not packaged), which `localenv up`
    installs (localenv.packages, "tests")."""
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose is not installed: `python -m localenv up` installs it (localenv/packages.py)")
    return found


@pytest.fixture(scope="session")
def stack_images(docker_engine: Any) -> list[str]:
    """The service images (built when their inputs changed) and the pod images the test runs."""
    from localenv.images import build_all

    build_all(only=["interlink", "docker-sidecar"])
    logs = paths_for(localenv_settings.load()).logs_dir
    cluster_images.ensure(cluster_images.PAUSE, logs)
    cluster_images.ensure(cluster_images.TESTBOX, logs)
    return [apps.SERVICE_IMAGES["interlink"], apps.SERVICE_IMAGES["docker-sidecar"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ComposeStack:
    compose: str
    project: str
    env: dict[str, str]
    port: int
    sidecar_name: str
    config_dir: Path

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.compose, "-f", str(COMPOSE_FILE), "-p", self.project, *args], env=self.env,
                              capture_output=True, text=True, check=check, timeout=timeout)

    def api(self) -> ApiClient:
        return ApiClient(f"http://127.0.0.1:{self.port}", (self.config_dir / "interlink.token").read_text().strip())


def _stack_env(config_dir: Path, port: int, sidecar_name: str) -> dict[str, str]:
    return {
        **os.environ,
        # The token files are this user's (root here); the services run as this user.
        "KOD_UID": str(os.getuid()),
        "KOD_GID": str(os.getgid()),
        "KOD_DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "KOD_CONFIG_DIR": str(config_dir),
        "KOD_INTERLINK_PORT": str(port),
        "KOD_SIDECAR_NAME": sidecar_name,
    }


@pytest.fixture
def stack(tmp_path: Path, docker_compose: str, stack_images: list[str], docker_engine: Any) -> Iterator[ComposeStack]:
    config_dir = tmp_path / "kod"
    for name in ("interlink", "docker-sidecar"):
        create_token_file(config_dir / f"{name}.token")
    port = _free_port()
    sidecar_name = f"compose-e2e-{uuid.uuid4().hex[:6]}"
    s = ComposeStack(docker_compose, f"kode2e{uuid.uuid4().hex[:6]}", _stack_env(config_dir, port, sidecar_name),
                     port, sidecar_name, config_dir)
    try:
        yield s
    finally:
        s.run("down", "--remove-orphans", "-t", "5", check=False)
        # Containers, volumes and the pods' network with its host rules (Docker has address
        # pools for only about thirty networks).
        sweep(docker_engine, sidecar_name)


def test_docker_compose_accepts_the_file_and_says_what_is_missing(tmp_path: Path, docker_compose: str) -> None:
    env = _stack_env(tmp_path, 3000, "docker")
    ok = subprocess.run([docker_compose, "-f", str(COMPOSE_FILE), "config", "-q"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    services = subprocess.run([docker_compose, "-f", str(COMPOSE_FILE), "--profile", "vk", "config", "--services"],
                              env=env, capture_output=True, text=True, timeout=60)
    assert sorted(services.stdout.split()) == ["docker-sidecar", "interlink", "vk"]
    del env["KOD_DOCKER_GID"]
    missing = subprocess.run([docker_compose, "-f", str(COMPOSE_FILE), "config", "-q"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "KOD_DOCKER_GID" in missing.stderr


async def _ping(api: ApiClient) -> NodeInfo | None:
    try:
        info: NodeInfo = await api.request("GET", "/v1/ping", model=NodeInfo, timeout=3)
        return info if info.sidecars and all(h.ok for h in info.sidecars) else None
    except (errors.KodError, OSError):
        return None


async def _wait(check: Any, *, timeout: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.mark.timeout(900)  # its fixtures may install docker-compose (600 s allowed) and build two images
async def test_the_stack_comes_up_runs_a_pod_in_docker_and_leaves_nothing(stack: ComposeStack, docker_engine: Any) -> None:
    up = stack.run("up", "-d")
    assert up.returncode == 0, up.stderr
    ps = stack.run("ps", "--services", "--filter", "status=running")
    assert sorted(ps.stdout.split()) == ["docker-sidecar", "interlink"]  # not the vk: its profile is off

    api = stack.api()
    try:
        info = await _wait(lambda: _ping(api), timeout=60, what="interlink to answer ping with a healthy sidecar")
        assert [h.name for h in info.sidecars] == ["docker"] and int(info.capacity["cpu"]) >= 1
        with pytest.raises(errors.Unauthorized):
            await ApiClient(f"http://127.0.0.1:{stack.port}", "wrong").request("GET", "/v1/ping")

        uid = str(uuid.uuid4())
        body = PodCreateRequest.model_validate({
            "pod": {"metadata": {"name": "hello", "namespace": "compose", "uid": uid},
                    "spec": {"restartPolicy": "Never",
                             "containers": [{"name": "main", "image": cluster_images.TESTBOX.ref,
                                             "command": ["sh", "-c", "echo hello from compose"]}]}},
            "containers": [{"name": "main", "command": ["sh", "-c", "echo hello from compose"]}],
        })
        created = await api.request("POST", "/v1/pods", body=body, model=PodStatus)
        assert created.sidecar == "docker"

        async def succeeded() -> bool:
            status: PodStatus = await api.request("GET", "/v1/pods/compose/hello", model=PodStatus)
            return status.phase == "Succeeded"

        await _wait(succeeded, timeout=60, what="the pod to succeed")
        log = b"".join([c async for c in api.stream("GET", "/v1/pods/compose/hello/containers/main/logs")])
        assert log == b"hello from compose\n"
        labelled = docker_engine.containers.list(all=True, ignore_removed=True, filters={"label": [f"io.kod.sidecar={stack.sidecar_name}",
                                                                              f"io.kod.pod.uid={uid}"]})
        assert labelled, "the pod's containers carry the stack's sidecar name"
        await api.request("DELETE", "/v1/pods/compose/hello", params={"uid": uid}, model=PodStatus)
        assert not docker_engine.containers.list(all=True, ignore_removed=True, filters={"label": f"io.kod.pod.uid={uid}"})
    finally:
        await api.close()

    down = stack.run("down", "-t", "5")
    assert down.returncode == 0, down.stderr
    left = docker_engine.containers.list(all=True, ignore_removed=True, filters={"label": f"com.docker.compose.project={stack.project}"})
    assert left == []
