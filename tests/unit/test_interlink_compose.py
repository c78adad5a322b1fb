"""docker-compose.yaml, read as data: the desktop stack keeps the desktop's isolation rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kod.apps import image_ref

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_stack_uses_the_project_images(compose: dict[str, Any]) -> None:
    images = {name: svc["image"] for name, svc in compose["services"].items()}
    assert images == {
        "docker-sidecar": image_ref("docker-sidecar"),
        "interlink": image_ref("interlink"),
        "vk": image_ref("vk"),
    }


@pytest.mark.parametrize("service", ["docker-sidecar", "interlink", "vk"])
def test_every_service_runs_unprivileged_and_locked_down(compose: dict[str, Any], service: str) -> None:
    svc = compose["services"][service]
    assert not svc.get("privileged")
    assert svc.get("network_mode") not in ("host",) and svc.get("pid") != "host" and svc.get("ipc") != "host"
    assert svc["cap_drop"] == ["ALL"] and not svc.get("cap_add")
    assert svc["read_only"] is True
    assert "no-new-privileges:true" in svc["security_opt"]
    assert not str(svc["user"]).startswith("0")


def test_only_interlink_is_published_and_only_on_loopback(compose: dict[str, Any]) -> None:
    published = {name: svc.get("ports", []) for name, svc in compose["services"].items() if svc.get("ports")}
    assert list(published) == ["interlink"]
    assert all(str(p).startswith("127.0.0.1:") for p in published["interlink"])


def test_secrets_are_files_never_values(compose: dict[str, Any]) -> None:
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"file"}, name
    for svc in compose["services"].values():
        for key, value in svc.get("environment", {}).items():
            if key.endswith("CREATE_TOKEN"):
                assert value == "false", key  # the tokens exist already, as mounted files
            elif "TOKEN" in key or "KUBECONFIG" in key:
                assert key.endswith(("TOKEN_FILE", "KUBECONFIG")) and value.startswith("/run/secrets/"), key


def test_only_the_docker_sidecar_gets_the_docker_socket(compose: dict[str, Any]) -> None:
    holders = [n for n, s in compose["services"].items() if any("docker.sock" in v for v in s.get("volumes", []))]
    assert holders == ["docker-sidecar"]


def test_the_virtual_kubelet_is_optional(compose: dict[str, Any]) -> None:
    assert compose["services"]["vk"]["profiles"] == ["vk"]
    assert all("profiles" not in s for n, s in compose["services"].items() if n != "vk")
