"""vk_bridge running inside the cluster (`kubectl apply -k kustomizations/in-cluster`), driving a
desktop's InterLink over the network: it bootstraps its node's identity from a bootstrap token
Secret (its ServiceAccount has no token and no rights), the node registers with the pod's
address, its serving certificate is approved after checking, and a pod runs in the desktop's
Docker, with `kubectl logs` going API server -> vk_bridge's pod -> InterLink -> sidecar."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kod import apps, toml
from kod.names import virtual_node_name
from localenv import desktop_stack, images, node_join
from localenv.handle import ClusterHandle
from localenv.progress import Progress
from tests.fixtures.virtual_node import VirtualNode

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NODE = f"{virtual_node_name()}-incluster"


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
    (overlay / "vk.toml").write_text(toml.dumps({
        "node": {"name": NODE, "user": "in-cluster-test"},
        "interlink": {"url": f"http://{_host_address(cluster)}:{settings.interlink_port}",
                      "token_file": "/var/run/kod/interlink/token",
                      # As the shipped vk.toml: the Secret volume is readable by the pod's fsGroup.
                      "token_file_group_readable": True},
        "identity": {"bootstrap_token_dir": "/var/run/kod/bootstrap", "cert_dir": "/var/lib/kod-vk/pki"},
        "kubelet_api": {"port": 10260, "cert_dir": "/var/lib/kod-vk/pki"},
        # The desktop's owner (what its registry entry says too): the same user as the stack's.
        "admission": {"owner_namespace": settings.owner_namespace},
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
        # The admin's part of a join: a bootstrap token, handed to the pod as a Secret (on stdin:
        # never on a command line).
        k("delete", "secret", "kod-vk-bootstrap", "-n", "kod-system", "--ignore-not-found")
        node_join.delete_bootstrap_tokens(cluster, NODE)
        token = node_join.create_bootstrap_token(cluster, node_name=NODE, minutes=30)
        k("create", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kod-vk-bootstrap", "namespace": "kod-system"},
            "stringData": {"token": token}}))
        k("apply", "-k", str(overlay))
        deadline = time.monotonic() + 180
        while True:
            vk_pods = cluster.kubectl_json("get", "pods", "-n", "kod-system", "-l", "app.kubernetes.io/name=kod-vk")["items"]
            pod_ip = vk_pods[0]["status"].get("podIP") if vk_pods else None
            if pod_ip:  # its serving certificate may name only the pod's address and names
                desktop_stack.approve_vk_csrs(stack, hostnames={vk_pods[0]["metadata"]["name"], NODE}, ips={pod_ip})
            state = desktop_stack.node_state(stack)
            if state and state["ready"]:
                break
            if time.monotonic() > deadline:
                logs = k("logs", "-n", "kod-system", "deploy/kod-vk", "--tail=40", check=False)
                raise AssertionError(f"node {NODE} not Ready in 180 s; vk_bridge's log:\n{logs.stdout}{logs.stderr}")
            time.sleep(1)
        yield VirtualNode(stack=stack, cluster=cluster, docker=docker_engine, image=testbox_image)
    finally:
        # Only what the overlay and this test add: the base (namespace, bootstrap RBAC) serves the
        # desktop's own vk_bridge too.
        k("delete", "deployment", "kod-vk", "-n", "kod-system", "--ignore-not-found", "--wait=true", check=False)
        for cm in cluster.kubectl_json("get", "configmaps", "-n", "kod-system")["items"]:
            if cm["metadata"]["name"].startswith("kod-vk-config-"):
                k("delete", "configmap", cm["metadata"]["name"], "-n", "kod-system", "--ignore-not-found", check=False)
        k("delete", "secret", "kod-vk-interlink", "-n", "kod-system", "--ignore-not-found", check=False)
        k("delete", "secret", "kod-vk-bootstrap", "-n", "kod-system", "--ignore-not-found", check=False)
        k("delete", "serviceaccount", "kod-vk", "-n", "kod-system", "--ignore-not-found", check=False)
        node_join.delete_bootstrap_tokens(cluster, NODE)
        k("delete", "node", NODE, "--ignore-not-found", check=False)
        desktop_stack.down(Progress(), cluster=cluster, settings=settings)


def test_vk_bridge_in_the_cluster_runs_pods_on_the_desktop(incluster_node: VirtualNode, owner_namespace: str) -> None:
    vn, ns = incluster_node, owner_namespace
    node = vn.node()
    vk_pod = vn.cluster.kubectl_json("get", "pods", "-n", "kod-system", "-l", "app.kubernetes.io/name=kod-vk")["items"][0]
    internal = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    assert internal == vk_pod["status"]["podIP"]  # the API server reaches the kubelet API in the pod network
    # It is its node, not its ServiceAccount: no token in the pod, no rights for the account.
    assert vk_pod["spec"]["automountServiceAccountToken"] is False
    assert not [v for v in vk_pod["spec"]["volumes"] if v["name"].startswith("kube-api-access")]
    sa = "--as=system:serviceaccount:kod-system:kod-vk"
    for verb, what in (("get", "secrets"), ("create", "serviceaccounts/token"), ("patch", "nodes/status"), ("list", "pods")):
        assert vn.cluster.kubectl("auth", "can-i", verb, what, "-A", sa, check=False).stdout.strip() == "no"
    # Its client certificate came from the bootstrap token, auto-approved.
    client_csrs = [c for c in vn.cluster.kubectl_json("get", "csr")["items"] if c["metadata"]["name"].startswith(f"kod-vk-client-{NODE}-")]
    assert client_csrs and all(c["spec"]["username"].startswith("system:bootstrap:") for c in client_csrs)
    assert all(c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet" for c in client_csrs)
    serving = [c for c in vn.cluster.kubectl_json("get", "csr")["items"]
               if c["spec"]["signerName"] == "kubernetes.io/kubelet-serving" and c["spec"]["username"] == f"system:node:{NODE}"]
    assert serving, "the serving CSR was made by the node itself"
    vn.create(ns, vn.pod("from-cluster", [{"name": "main", "command": ["sh", "-c", "echo hello from an in-cluster vk_bridge; sleep 30"]}]))
    pod = vn.wait_phase(ns, "from-cluster", "Running")
    uid = pod["metadata"]["uid"]
    assert [c for c in vn.containers(uid) if c.status == "running"]
    vn.wait(ns, "from-cluster", lambda p: "hello" in vn.logs(ns, "from-cluster"), what="its log line")
    assert vn.logs(ns, "from-cluster") == "hello from an in-cluster vk_bridge\n"
    vn.cluster.kubectl("delete", "pod", "from-cluster", "-n", ns, "--grace-period=1", "--timeout=60s")
    assert vn.containers(uid) == []
