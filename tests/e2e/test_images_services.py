"""The images of kod's own services (interlink, the Docker sidecar, the virtual kubelet): built by
the same one command, non-root, and the sidecar's image reaches the Docker engine through the
mounted socket with only the socket's group added."""

from __future__ import annotations

import os
from typing import Any

import pytest

from kod import apps
from tests.e2e.images_support import LABEL, LABEL_VALUE, RUN_ID, RUN_LABEL

pytestmark = pytest.mark.e2e

SCRIPTS = {"interlink": "kod-interlink", "docker-sidecar": "kod-docker-sidecar", "vk": "kod-vk"}


@pytest.fixture(scope="module")
def service_images(docker_engine: Any) -> dict[str, str]:
    from localenv import images
    from localenv.progress import Progress

    images.build_all(Progress(quiet=True), only=list(apps.SERVICE_IMAGES))
    return dict(apps.SERVICE_IMAGES)


def run(client: Any, image: str, **kwargs: Any) -> tuple[int, str]:
    container = client.containers.run(image, detach=True, labels={LABEL: LABEL_VALUE, RUN_LABEL: RUN_ID}, **kwargs)
    try:
        code = int(container.wait(timeout=120)["StatusCode"])
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("service", list(SCRIPTS))
def test_each_service_image_runs_its_command_as_a_non_root_user(service: str, docker_engine: Any,
                                                                service_images: dict[str, str]) -> None:
    image = service_images[service]
    config = docker_engine.images.get(image).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == [SCRIPTS[service]]
    code, out = run(docker_engine, image, command=["--help"])
    assert code == 0, out
    assert f"usage: {SCRIPTS[service]}" in out
    code, out = run(docker_engine, image, entrypoint=["id", "-u"])
    assert (code, out.strip()) == (0, "10001")


def test_the_sidecar_image_reaches_the_docker_engine_through_the_socket(docker_engine: Any,
                                                                         service_images: dict[str, str]) -> None:
    socket_gid = os.stat("/var/run/docker.sock").st_gid
    code, out = run(
        docker_engine, service_images["docker-sidecar"],
        entrypoint=["python", "-c", "import docker; print('engine', docker.from_env().version()['ApiVersion'])"],
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        group_add=[str(socket_gid)],
    )
    assert code == 0, out
    assert out.startswith("engine ")
