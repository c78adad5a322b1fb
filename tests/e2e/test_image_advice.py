"""The advice fixes the error: with the app's image gone from the cluster's node, `cloudify
firefox` refuses to start and names a command; running exactly that command builds the image
and imports it into the node, and cloudify's checks then find it.

Firefox: the smallest app image (~1.1 GB; Blender's is ~1.2 GB and slower to build).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kod import apps
from tests.e2e.cloudify_support import REPO, ensure_images

pytestmark = pytest.mark.e2e

APP = apps.APPS["firefox"]


def node_images(cluster: Any) -> set[str]:
    return {name for node in cluster.kubectl_json("get", "nodes")["items"]
            for img in node["status"].get("images") or [] for name in img.get("names") or []}


def wait_not_reported(cluster: Any, ref: str, timeout: float = 180.0) -> None:
    """Until no node reports `ref` (the kubelet refreshes its image list every 30 s or so)."""
    deadline = time.monotonic() + timeout
    while ref in node_images(cluster) or f"docker.io/{ref}" in node_images(cluster):
        assert time.monotonic() < deadline, f"a node still reports {ref} {timeout:.0f} s after its removal"
        time.sleep(2)


def cloudify_env(cluster: Any, tmp_path: Path, namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOD_CLOUDIFY_")}
    env.update(KUBECONFIG=str(cluster.kubeconfig), KOD_CLOUDIFY_NAMESPACE=namespace,
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"))
    return env


async def preflight_passes(env: dict[str, str], config: Path) -> None:
    """cloudify's own checks (the node list, then the nodes, the app's image), as `cloudify
    -r native firefox` makes them before it creates anything; raises what cloudify would say."""
    from cloudify import preflight
    from cloudify import settings as s
    from cloudify.context import Context
    from cloudify.options import session_options

    settings = s.load(path=config, environ=env, overrides={"run_mode": "native"})
    ctx = Context(settings=settings, host=s.HostEnv.from_environ(env), out=sys.stdout, err=sys.stderr)
    kube = ctx.connect(timeout=30)
    try:
        latency, nodes = await preflight.measure(kube, timeout=30)
    finally:
        await kube.close()
    pre = preflight.Preflight(latency=latency, nodes=nodes)
    preflight.check(pre, session_options(APP.name, settings, run_mode_given=True), settings, ctx.user,
                    app_image=settings.image(APP.image))


def test_the_command_a_missing_image_error_advises_puts_the_image_on_the_node(
        cluster: Any, kube_namespace: str, tmp_path: Path) -> None:
    if cluster.containerd_socket is None:
        pytest.skip("a reused cluster's nodes are out of reach: the test removes an image from the node")
    ensure_images(cluster)
    env = cloudify_env(cluster, tmp_path, kube_namespace)
    try:
        assert cluster.remove_images([APP.image_ref]), f"the node did not have {APP.image_ref}"
        wait_not_reported(cluster, APP.image_ref)

        # What the user sees: cloudify refuses, and names a command.
        refused = subprocess.run([sys.executable, "-m", "cloudify.main", "--no-fallback", "-r", "native", "-p", "novnc",
                                  "-t", "30", APP.name], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1, refused.stderr
        assert f"image {APP.image_ref} is on no node" in refused.stderr, refused.stderr
        advised = re.search(r"what to do: .*?`(python -m localenv [^`]+)`", refused.stderr)
        assert advised, refused.stderr

        # Exactly that command (with this virtualenv's python), as the user would type it.
        words = shlex.split(advised.group(1))
        ran = subprocess.run([sys.executable, *words[1:]], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=1200)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "images into the cluster" in ran.stdout, ran.stdout

        # cloudify's checks now find the image on a node: the same refusal cannot happen again.
        asyncio.run(preflight_passes(env, tmp_path / "config" / "kod" / "cloudify.toml"))
    finally:
        cluster.provide_images([APP.image_ref])  # whatever happened, the next tests find it
