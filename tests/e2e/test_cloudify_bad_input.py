"""Bad input and an absent cluster: a clear message, a non-zero exit, and nothing created; and
the local fallback when the cluster is away or slow and the app is installed here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cloudify_support import Cloudify, cloudify, cloudify_images  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e


def nothing_created(cloudify: Cloudify) -> None:
    assert cloudify.leftovers() == {}
    assert cloudify.pvcs() == []
    assert not list(cloudify.state_dir.rglob("*.json")), "a session record was left"


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["chrome"], {}, 2, "unknown app 'chrome'"),
        (["-q", "12", "firefox"], {}, 2, "the quality must be from 0 to 9, not 12"),
        (["-c", "11", "-v", "firefox"], {}, 2, "the compression must be from 0 to 9, not 11"),
        (["-t", "0", "firefox"], {}, 2, "the timeout must be a positive number"),
        (["-p", "novnc", "-r", "pod", "firefox"], {}, 2, "-p novnc cannot be used with -r pod"),
        (["-v", "firefox"], {"KOD_CLOUDIFY_IMAGE_TAG": "no-such-tag"}, 1, "image kod/firefox:no-such-tag is on no node"),
        (["cuda-blender"], {}, 1, "cuda-blender needs nvidia.com/gpu"),
        (["-v", "firefox"], {"KOD_CLOUDIFY_QUALITY": "42"}, 2, "quality"),
    ],
)
def test_bad_input_creates_nothing(cloudify: Cloudify, args: list[str], env: dict[str, str], code: int, message: str) -> None:
    out = cloudify.run(*args, env=env)
    assert out.returncode == code, out.stderr
    assert message in out.stderr
    nothing_created(cloudify)


def test_unreachable_cluster_is_a_clear_error(cloudify: Cloudify, tmp_path: Path) -> None:
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: x, user: u}}]\n"
        "clusters: [{name: x, cluster: {server: 'https://127.0.0.1:9'}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    dead.chmod(0o600)  # cloudify refuses a kubeconfig others may read
    # "Not installed here" made explicit: whether this machine has a Firefox must not decide the test.
    missing = '{"firefox": ["/nonexistent/firefox"]}'
    out = cloudify.run("-t", "5", "firefox", env={"KUBECONFIG": str(dead), "KOD_CLOUDIFY_LOCAL_COMMANDS": missing})
    assert out.returncode == 1, out.stderr
    assert "cannot reach the cluster, and firefox is not installed here" in out.stderr
    nothing_created(cloudify)


@pytest.mark.parametrize("why", ["unreachable", "slow"])
def test_installed_app_runs_locally_when_the_cluster_is_away_or_slow(cloudify: Cloudify, tmp_path: Path, why: str) -> None:
    # "Installed here": a real local program stands for the local Firefox (the desktop has none).
    env = {"KOD_CLOUDIFY_LOCAL_COMMANDS": '{"firefox": ["sh", "-c", "echo firefox ran here; exit 3"]}'}
    if why == "unreachable":
        dead = tmp_path / "dead.kubeconfig"
        dead.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: x, user: u}}]\n"
            "clusters: [{name: x, cluster: {server: 'https://127.0.0.1:9'}}]\nusers: [{name: u, user: {token: t}}]\n"
        )
        dead.chmod(0o600)  # cloudify refuses a kubeconfig others may read
        env["KUBECONFIG"] = str(dead)
        expected = "the cluster did not answer"
    else:
        env["KOD_CLOUDIFY_SLOW_THRESHOLD"] = "0.0001"  # any real answer is slower than that
        expected = "the cluster did not answer within 0.0001 s"
    out = cloudify.run("firefox", env=env)
    assert "running firefox locally" in out.stderr and expected in out.stderr, out.stderr
    assert "firefox ran here" in out.stdout
    assert out.returncode == 3  # the local app's own exit code
    nothing_created(cloudify)
