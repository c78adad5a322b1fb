"""The desktop stack's generated files: configs every component accepts, private tokens, the same
default node name as vk_bridge, and a kubeconfig token the client library reads."""

from __future__ import annotations

import importlib
import json
import stat
import tomllib
from pathlib import Path

import pytest

from localenv import desktop_stack
from localenv.handle import ClusterHandle
from vk_bridge.kube import load_connection
from vk_bridge.settings import VkSettings, default_node_name


@pytest.fixture
def stack(tmp_path: Path) -> desktop_stack.Stack:
    cluster = ClusterHandle(kubeconfig=tmp_path / "kc", kubectl_path=tmp_path / "kubectl", node_name="kod-worker")
    return desktop_stack.Stack(settings=desktop_stack.StackSettings(node_name="desktop-test", user="ann"), root=tmp_path, cluster=cluster)


@pytest.mark.parametrize("host", ["vm", "My_Laptop.local", "--weird--", "UPPER"])
def test_default_node_name_agrees_with_vk_bridge(host: str) -> None:
    assert desktop_stack.default_node_name(host) == default_node_name(host)


def test_tokens_are_random_private_and_kept(stack: desktop_stack.Stack) -> None:
    path = stack.interlink_token_file
    assert desktop_stack.ensure_token(path)
    first = path.read_text()
    assert len(first.strip()) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not desktop_stack.ensure_token(path)
    assert path.read_text() == first
    assert desktop_stack.ensure_token(stack.sidecar_token_file)
    assert stack.sidecar_token_file.read_text() != first


def test_toml_writer_round_trips() -> None:
    data = {"a": 1, "b": "x\"y", "c": [1, 2], "d": {"e": True, "f": {"g": 0.5}}, "h": [{"name": "n", "url": "u"}]}
    assert tomllib.loads(desktop_stack.to_toml(data)) == data


def test_vk_config_is_valid_vk_settings(stack: desktop_stack.Stack) -> None:
    text = desktop_stack.to_toml(desktop_stack.configs(stack)["vk"])
    settings = VkSettings.model_validate(tomllib.loads(text))
    assert settings.node.name == "desktop-test" and settings.node.user == "ann"
    assert settings.interlink.url == "http://127.0.0.1:3000"
    assert settings.interlink.token_file == stack.interlink_token_file
    assert settings.node.capacity["pods"] == "250"


@pytest.mark.parametrize(
    ("name", "module", "model"),
    [("interlink", "interlink.settings", "InterlinkSettings"), ("sidecar", "sidecars.docker.settings", "DockerSidecarSettings")],
)
def test_service_configs_are_valid_settings(stack: desktop_stack.Stack, name: str, module: str, model: str) -> None:
    try:
        cls = getattr(importlib.import_module(module), model)
    except (ImportError, AttributeError):
        pytest.skip(f"{module}.{model} is not there yet")
    settings = cls.model_validate(tomllib.loads(desktop_stack.to_toml(desktop_stack.configs(stack)[name])))
    assert settings.create_token is False


def test_token_kubeconfig_is_read_by_the_client(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kod", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "kod-vk", "user": {"token": "abc.def.ghi"}}],
        "contexts": [{"name": "c", "context": {"cluster": "kod", "user": "kod-vk"}}],
        "current-context": "c",
    }
    path = tmp_path / "kc"
    path.write_text(json.dumps(config))
    conn = load_connection(path)
    assert conn.host == "https://127.0.0.1:6443"
    assert conn.authorization() == "Bearer abc.def.ghi"
