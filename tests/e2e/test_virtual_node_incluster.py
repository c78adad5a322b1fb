"""vk_bridge running inside the cluster (`kubectl apply -k kustomizations/in-cluster`), driving a
desktop's InterLink over the network: the node registers with the pod's address, its serving
certificate is approved, and a pod runs in the desktop's Docker, with `kubectl logs` going
API server -> vk_bridge's pod -> InterLink -> sidecar."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kod import apps
from localenv import desktop_stack, images
from localenv.handle import ClusterHandle
from localenv.progress import Progress
from tests.fixtures.virtual_node import VirtualNode

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NODE = f"{desktop_stack.default_node_name()}-incluster"


def _settings() -> desktop_stack.StackSettings:
    return desktop_stack.load_stack_settings().private("incluster", port_offset=300, node_name=NODE,
                                                       interlink_host="0.0.0.0")


def _host_address(cluster: ClusterHandle) -> str:
    """An address of this machine that pods reach: the real node's InternalIP (one machine)."""
    node = cluster.kubectl_json("get", "node", cluster.node_name)
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


@pytest.fixture(scope="module")
def incluster_node(cluster: ClusterHandle, docker_engine: Any, testbox_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualNode]:
    image = apps.SERVICE_IMAGES["vk"]
    images.build_all(Progress(), only=["vk"])
    cluster.import_images([image])
    settings = _settings()
    stack = desktop_stack.up(Progress(), cluster=cluster, settings=settings, with_vk=False)
    overlay = tmp_path_factory.mktemp("in-cluster-overlay")
    (overlay / "vk.toml").write_text(desktop_stack.to_toml({
        "node": {"name": NODE, "user": "in-cluster-test"},
        "interlink": {"url": f"http://{_host_address(cluster)}:{settings.interlink_port}",
                      "token_file": "/var/run/kod/interlink/token"},
        "kubelet_api": {"port": 10260, "cert_dir": "/var/lib/kod-vk/pki"},
    }))
    base = os.path.relpath(REPO / "kustomizations" / "in-cluster", overlay)
    (overlay / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [base],
        "configMapGenerator": [{"name": "kod-vk-config", "namespace": "kod-system", "behavior": "replace", "files": ["vk.toml"]}],
    }))
    k = cluster.kubectl
    try:
        k("delete", "secret", "kod-vk-interlink", "-n", "kod-system", "--ignore-not-found")
        k("apply", "-k", str(REPO / "kustomizations"))
        k("create", "secret", "generic", "kod-vk-interlink", "-n", "kod-system", f"--from-file=token={stack.interlink_token_file}")
        k("apply", "-k", str(overlay))
        deadline = time.monotonic() + 180
        while True:
            desktop_stack.approve_vk_csrs(stack)
            state = desktop_stack.node_state(stack)
            if state and state["ready"]:
                break
            if time.monotonic() > deadline:
                logs = k("logs", "-n", "kod-system", "deploy/kod-vk", "--tail=40", check=False)
                raise AssertionError(f"node {NODE} not Ready in 180 s; vk_bridge's log:\n{logs.stdout}{logs.stderr}")
            time.sleep(1)
        yield VirtualNode(stack=stack, cluster=cluster, docker=docker_engine, image=testbox_image)
    finally:
        # Only what the overlay adds: the base (namespace, ServiceAccount, RBAC) serves the
        # desktop's own vk_bridge too, whose token dies with the ServiceAccount.
        k("delete", "deployment", "kod-vk", "-n", "kod-system", "--ignore-not-found", "--wait=true", check=False)
        for cm in cluster.kubectl_json("get", "configmaps", "-n", "kod-system")["items"]:
            if cm["metadata"]["name"].startswith("kod-vk-config-"):
                k("delete", "configmap", cm["metadata"]["name"], "-n", "kod-system", "--ignore-not-found", check=False)
        k("delete", "secret", "kod-vk-interlink", "-n", "kod-system", "--ignore-not-found", check=False)
        k("delete", "node", NODE, "--ignore-not-found", check=False)
        desktop_stack.down(Progress(), cluster=cluster, settings=settings)


def test_vk_bridge_in_the_cluster_runs_pods_on_the_desktop(incluster_node: VirtualNode, kube_namespace: str) -> None:
    vn, ns = incluster_node, kube_namespace
    node = vn.node()
    vk_pod = vn.cluster.kubectl_json("get", "pods", "-n", "kod-system", "-l", "app.kubernetes.io/name=kod-vk")["items"][0]
    internal = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    assert internal == vk_pod["status"]["podIP"]  # the API server reaches the kubelet API in the pod network
    vn.create(ns, vn.pod("from-cluster", [{"name": "main", "command": ["sh", "-c", "echo hello from an in-cluster vk_bridge; sleep 30"]}]))
    pod = vn.wait_phase(ns, "from-cluster", "Running")
    uid = pod["metadata"]["uid"]
    assert [c for c in vn.containers(uid) if c.status == "running"]
    vn.wait(ns, "from-cluster", lambda p: "hello" in vn.logs(ns, "from-cluster"), what="its log line")
    assert vn.logs(ns, "from-cluster") == "hello from an in-cluster vk_bridge\n"
    vn.cluster.kubectl("delete", "pod", "from-cluster", "-n", ns, "--grace-period=1", "--timeout=60s")
    assert vn.containers(uid) == []
