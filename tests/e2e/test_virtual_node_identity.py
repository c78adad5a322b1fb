"""The desktop is its node to the API server, and nothing more: every test here is an attack made
with the desktop's own credentials (the client certificate vk_bridge got, read from its cert dir)
against the real cluster, which must fail, beside what a kubelet of that node needs, which must
work. Also: the certificate rotates and the node stays Ready; a dead bootstrap token says what to
do; a Node that is not this desktop's is never adopted; a flood of bad tokens on the kubelet API
costs a bounded number of TokenReviews.

docs/security.md ("Who the desktop is to the cluster") cites these tests by name.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from kod import labels, toml
from localenv import desktop_stack, node_join
from localenv.handle import ClusterHandle
from localenv.progress import Progress
from tests.fixtures.virtual_node import VirtualNode

pytestmark = pytest.mark.e2e

FORBIDDEN = "(Forbidden)"


class AsNode:
    """The desktop's own credentials, as an attacker on the desktop would use them: kubectl with
    the kubeconfig vk_bridge keeps beside its client certificate (`<cert dir>/kubeconfig` ->
    `kubelet-client-current.pem`), and raw HTTPS requests with that certificate (kubectl reads an
    object before it patches or labels it, so its refusals would not show what admission says)."""

    def __init__(self, vn: VirtualNode) -> None:
        self.vn = vn
        self.kubeconfig = vn.stack.vk_node_kubeconfig
        config = json.loads(self.kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        self.server = cluster["server"].removeprefix("https://")
        self.tls = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        self.tls.load_cert_chain(str(vn.stack.vk_pki_dir / "kubelet-client-current.pem"))

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """One API request as the node; (status, decoded body)."""
        conn = http.client.HTTPSConnection(self.server, context=self.tls, timeout=30)
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/merge-patch+json" if method == "PATCH" else "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
        finally:
            conn.close()

    def refused(self, method: str, path: str, body: Any = None, *, why: str = "") -> str:
        """Assert the API server answers 403 (for reason `why`, when given)."""
        status, answer = self.request(method, path, body)
        message = str(answer.get("message", ""))
        assert status == 403, f"{method} {path} answered {status}: {message or answer}"
        assert why in message, f"{method} {path}: refused, but not because {why!r}: {message}"
        return message

    def __call__(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.vn.cluster.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
                              input=input, capture_output=True, text=True, timeout=60)

    def denied(self, *args: str, input: str | None = None, why: str = "") -> str:
        """Run it; assert the API server refused it (403) and, when given, for reason `why`."""
        proc = self(*args, input=input)
        assert proc.returncode != 0, f"kubectl {' '.join(args)} was allowed: {proc.stdout[:300]}"
        assert FORBIDDEN in proc.stderr or "is forbidden" in proc.stderr, f"kubectl {' '.join(args)} failed, but not with 403: {proc.stderr}"
        assert why in proc.stderr, f"kubectl {' '.join(args)}: refused, but not because {why!r}: {proc.stderr}"
        return proc.stderr

    def allowed(self, *args: str, input: str | None = None) -> str:
        proc = self(*args, input=input)
        assert proc.returncode == 0, f"kubectl {' '.join(args)} was refused: {proc.stderr}"
        return proc.stdout


@pytest.fixture
def as_node(virtual_node: VirtualNode) -> AsNode:
    node = AsNode(virtual_node)
    pem = virtual_node.stack.vk_pki_dir / "kubelet-client-current.pem"
    assert pem.exists() and (pem.stat().st_mode & 0o077) == 0, "vk_bridge's key and certificate must be private"
    return node


def token_request(pod: dict[str, Any] | None, audience: str | None = None) -> str:
    spec: dict[str, Any] = {"expirationSeconds": 600}
    if audience is not None:
        spec["audiences"] = [audience]
    if pod is not None:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
    return json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})


def worker_pod(vn: VirtualNode, name: str, **spec: Any) -> dict[str, Any]:
    """A pod on the cluster's real node (not the desktop)."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": vn.cluster.node_name, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": vn.image, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "300"]}],
                 **spec},
    }


@pytest.fixture
def pods(virtual_node: VirtualNode, owner_namespace: str) -> dict[str, dict[str, Any]]:
    """In the owner's namespace (the only one the desktop runs pods of): a Secret, a ConfigMap and a ServiceAccount that a pod on the desktop
    uses (a Secret volume, env from the ConfigMap, a projected token), and others that only a pod
    on the real node, or nobody, uses."""
    vn, ns = virtual_node, owner_namespace

    def secret(name: str, value: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"value": value}}

    def config_map(name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"key": name}}

    vn.create(ns, secret("mine", "desktop-secret"), secret("theirs", "worker-secret"), secret("loose", "nobody's"),
              config_map("mine-cm"), config_map("theirs-cm"),
              {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}})
    desktop = vn.pod("on-desktop", [{
        "name": "main",
        "command": ["sh", "-c", "cat /s/value; echo; echo cm=$CM; test -s /t/token && echo token-present; sleep 300"],
        "env": [{"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "mine-cm", "key": "key"}}}],
        "volumeMounts": [{"name": "s", "mountPath": "/s"}, {"name": "t", "mountPath": "/t"}],
    }], serviceAccountName="runner", volumes=[
        {"name": "s", "secret": {"secretName": "mine"}},
        {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 600}}]}},
    ])
    worker = worker_pod(vn, "on-worker", serviceAccountName="runner", volumes=[
        {"name": "s", "secret": {"secretName": "theirs"}}, {"name": "c", "configMap": {"name": "theirs-cm"}}])
    vn.create(ns, desktop, worker)
    return {"desktop": vn.wait_phase(ns, "on-desktop", "Running", timeout=90), "worker": vn.get(ns, "on-worker") or {}}


def test_the_desktop_authenticates_as_its_node_and_its_bootstrap_token_is_gone(virtual_node: VirtualNode, as_node: AsNode) -> None:
    who = json.loads(as_node.allowed("auth", "whoami", "-o", "json"))["status"]["userInfo"]
    assert who["username"] == f"system:node:{virtual_node.name}" and "system:nodes" in who["groups"]
    # Used once, then deleted: it can no longer make anyone a node.
    left = virtual_node.cluster.kubectl_json("get", "secrets", "-n", "kube-system", "-l", f"{node_join.FOR_NODE_LABEL}={virtual_node.name}")
    assert left["items"] == []
    # The cluster-wide role of earlier versions is gone.
    assert virtual_node.cluster.kubectl("get", "clusterrole", "kod-virtual-kubelet", check=False).returncode != 0
    # Its node: Ready, renewed by this identity.
    assert virtual_node.node_ready() == "True"
    lease = json.loads(as_node.allowed("get", "lease", virtual_node.name, "-n", "kube-node-lease", "-o", "json"))
    assert lease["spec"]["holderIdentity"] == virtual_node.name


def test_it_reads_only_the_secrets_and_config_maps_of_pods_bound_to_it(
    virtual_node: VirtualNode, as_node: AsNode, pods: dict[str, dict[str, Any]], owner_namespace: str,
) -> None:
    ns = owner_namespace
    # What a kubelet of this node needs works: the pod got its Secret, ConfigMap and token.
    virtual_node.wait(ns, "on-desktop", lambda p: "token-present" in virtual_node.logs(ns, "on-desktop"), what="its log")
    assert virtual_node.logs(ns, "on-desktop") == "desktop-secret\ncm=mine-cm\ntoken-present\n"
    assert "desktop-secret" not in json.dumps(pods["desktop"])  # (the value came through the Secret, not the spec)
    as_node.allowed("get", "secret", "mine", "-n", ns)
    as_node.allowed("get", "configmap", "mine-cm", "-n", ns)
    # Everything else is refused.
    why = "no relationship found between node"
    as_node.denied("get", "secret", "theirs", "-n", ns, why=why)         # a pod on another node uses it
    as_node.denied("get", "configmap", "theirs-cm", "-n", ns, why=why)
    as_node.denied("get", "secret", "loose", "-n", ns, why=why)          # no pod uses it
    as_node.denied("get", "secrets", "-n", ns)                           # listing
    as_node.denied("get", "secrets", "-A")
    as_node.denied("get", "configmaps", "-n", "kube-system")
    name = f"kod-identity-test-{uuid.uuid4().hex[:6]}"
    virtual_node.cluster.kubectl("create", "secret", "generic", name, "-n", "kube-system", "--from-literal=v=x")
    try:
        as_node.denied("get", "secret", name, "-n", "kube-system", why=why)  # another namespace
    finally:
        virtual_node.cluster.kubectl("delete", "secret", name, "-n", "kube-system", "--ignore-not-found")


def test_it_gets_tokens_only_bound_to_its_own_pods(
    virtual_node: VirtualNode, as_node: AsNode, pods: dict[str, dict[str, Any]], owner_namespace: str,
) -> None:
    ns = owner_namespace
    path = f"/api/v1/namespaces/{ns}/serviceaccounts/runner/token"
    mine = json.loads(as_node.allowed("create", "--raw", path, "-f", "-", input=token_request(pods["desktop"])))
    assert mine["status"]["token"]
    # The token it got is bound to its pod, and the API server says so.
    review = virtual_node.cluster.kubectl(
        "create", "-o", "json", "-f", "-",
        input=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": mine["status"]["token"]}}))
    user = json.loads(review.stdout)["status"]["user"]
    assert user["username"] == f"system:serviceaccount:{ns}:runner"
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == ["on-desktop"]
    assert user["extra"]["authentication.kubernetes.io/node-name"] == [virtual_node.name]

    as_node.denied("create", "--raw", path, "-f", "-", input=token_request(None), why="not bound to a pod")
    as_node.denied("create", "--raw", path, "-f", "-", input=token_request(pods["worker"]), why="scheduled on a different node")
    as_node.denied("create", "--raw", path, "-f", "-", input=token_request(pods["desktop"], audience="https://vault.example"),
                   why="audience")
    as_node.denied("create", "--raw", f"/api/v1/namespaces/{ns}/serviceaccounts/default/token", "-f", "-",
                   input=token_request(pods["desktop"]))                          # another ServiceAccount
    as_node.denied("create", "--raw", "/api/v1/namespaces/kube-system/serviceaccounts/default/token", "-f", "-",
                   input=token_request(None))
    as_node.denied("create", "token", "runner", "-n", ns)


def test_other_nodes_and_their_leases_are_out_of_reach(virtual_node: VirtualNode, as_node: AsNode) -> None:
    other = virtual_node.cluster.node_name
    as_node.allowed("get", "node", virtual_node.name)
    as_node.denied("get", "node", other, why="cannot read")
    as_node.denied("get", "nodes", why="cannot read all nodes")
    why = "is not allowed to modify node"
    as_node.refused("PATCH", f"/api/v1/nodes/{other}", {"metadata": {"labels": {"kod.io/evil": "x"}}}, why=why)
    as_node.refused("PATCH", f"/api/v1/nodes/{other}/status",
                    {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Evil"}]}}, why=why)
    as_node.refused("DELETE", f"/api/v1/nodes/{other}")
    as_node.refused("DELETE", f"/api/v1/nodes/{virtual_node.name}")  # not even its own
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    why = "same name as the requesting node"
    as_node.denied("get", "lease", other, "-n", "kube-node-lease", why=why)
    as_node.refused("PATCH", f"{leases}/{other}", {"spec": {"holderIdentity": "evil"}}, why=why)
    as_node.refused("DELETE", f"{leases}/{other}", why=why)
    as_node.denied("create", "-f", "-", input=json.dumps({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": f"{virtual_node.name}-twin", "namespace": "kube-node-lease"}, "spec": {"holderIdentity": "x"}}))
    as_node.denied("get", "leases", "-n", "kube-system")
    assert virtual_node.cluster.kubectl_json("get", "node", other)["metadata"]["labels"].get("kod.io/evil") is None


def test_pods_of_other_nodes_are_out_of_reach(
    virtual_node: VirtualNode, as_node: AsNode, pods: dict[str, dict[str, Any]], owner_namespace: str,
) -> None:
    ns, other = owner_namespace, virtual_node.cluster.node_name
    own = json.loads(as_node.allowed("get", "pods", "-A", "--field-selector", f"spec.nodeName={virtual_node.name}", "-o", "json"))
    assert {p["spec"]["nodeName"] for p in own["items"]} == {virtual_node.name}
    why = "spec.nodeName field selector"
    as_node.denied("get", "pods", "-A", why=why)
    as_node.denied("get", "pods", "-n", ns, why=why)
    as_node.denied("get", "pods", "-A", "--field-selector", f"spec.nodeName={other}", why=why)
    as_node.denied("get", "pod", "on-worker", "-n", ns, why="no relationship found between node")
    as_node.refused("DELETE", f"/api/v1/namespaces/{ns}/pods/on-worker", why="can only delete pods with spec.nodeName set to itself")
    as_node.refused("PATCH", f"/api/v1/namespaces/{ns}/pods/on-worker/status", {"status": {"phase": "Failed"}},
                    why="can only update pod status for pods with spec.nodeName set to itself")
    # Creating pods: only mirror pods, bound to itself (and then without Secrets or tokens).
    as_node.denied("create", "-n", ns, "-f", "-", input=json.dumps(worker_pod(virtual_node, "planted")))
    planted = worker_pod(virtual_node, "planted-here")
    planted["spec"]["nodeName"] = virtual_node.name
    as_node.denied("create", "-n", ns, "-f", "-", input=json.dumps(planted), why="mirror pods")
    assert virtual_node.get(ns, "on-worker")["status"].get("phase") != "Failed"  # type: ignore[index]


def test_it_cannot_change_its_own_taints_or_protected_labels(virtual_node: VirtualNode, as_node: AsNode) -> None:
    path = f"/api/v1/nodes/{virtual_node.name}"
    # The same request with a harmless label passes admission (dry run): the refusals below are
    # about what they change, not about the request.
    status, _ = as_node.request("PATCH", path + "?dryRun=All", {"metadata": {"labels": {"kod.io/probe": "x"}}})
    assert status == 200
    as_node.refused("PATCH", path, {"spec": {"taints": []}}, why="not allowed to modify taints")
    as_node.denied("taint", "node", virtual_node.name, f"{labels.VIRTUAL_NODE_TAINT_KEY}-", why="not allowed to modify taints")
    for key in ("node-restriction.kubernetes.io/owner", "node-role.kubernetes.io/control-plane", "kubernetes.io/role"):
        as_node.refused("PATCH", path, {"metadata": {"labels": {key: "mallory"}}}, why=f"is not allowed to modify labels: {key}")
    taints = virtual_node.node()["spec"]["taints"]
    assert {"key": labels.VIRTUAL_NODE_TAINT_KEY, "value": "true", "effect": "NoSchedule"} in taints


def test_what_it_still_may_do_is_what_every_kubelet_may(virtual_node: VirtualNode, as_node: AsNode, owner_namespace: str) -> None:
    """The Node authorizer's rules that are not narrowed to the node (docs/security.md says them);
    changes go through admission with --dry-run=server, so nothing is left behind."""
    node = virtual_node.name
    as_node.allowed("get", "services", "-A")                                # service-link variables
    as_node.allowed("get", "csr")                                           # every CSR's metadata
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "kod-identity-test", "namespace": owner_namespace},
             "involvedObject": {"kind": "Pod", "name": "anything", "namespace": owner_namespace}, "reason": "Test", "message": "x"}
    as_node.allowed("create", "--dry-run=server", "-f", "-", input=json.dumps(event))  # events, in any namespace
    # Its own labels outside the protected prefixes, including the owner label: a node writes
    # kod.io/desktop-of about itself, so nothing may take it as proof of whose desktop it is.
    as_node.allowed("label", "node", node, "kod.io/desktop-of=mallory", "--overwrite", "--dry-run=server")
    assert virtual_node.node()["metadata"]["labels"][labels.DESKTOP_OF] != "mallory"


# -- rotation ----------------------------------------------------------------------------------------


def _serial(pem: Path) -> int:
    return x509.load_pem_x509_certificate(pem.read_bytes()).serial_number


@pytest.fixture(scope="module")
def rotating_node(cluster: ClusterHandle, docker_engine: Any, testbox_image: str) -> Iterator[VirtualNode]:
    """A private stack whose vk_bridge asks for the shortest certificate the signer gives (600 s;
    the signer backdates notBefore 5 min, so its lifetime is 900 s) and renews it at 34-36 % of
    it: 6-24 s after each issue."""
    settings = desktop_stack.load_stack_settings().private(
        "rotate", port_offset=400, kubelet_port_offset=4,
        vk_identity={"certificate_seconds": 600, "rotation_fraction": [0.34, 0.36]},
    )
    try:
        stack = desktop_stack.up(Progress(), cluster=cluster, settings=settings)
        yield VirtualNode(stack=stack, cluster=cluster, docker=docker_engine, image=testbox_image)
    finally:
        desktop_stack.down(Progress(), cluster=cluster, settings=settings)


def test_the_certificate_rotates_and_the_node_stays_ready(owner_namespace: str, rotating_node: VirtualNode) -> None:
    vn, ns = rotating_node, owner_namespace
    pem = vn.stack.vk_pki_dir / "kubelet-client-current.pem"
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(seconds=900)  # 600 s + the signer's backdating
    seen = [_serial(pem)]
    deadline = time.monotonic() + 150
    while len(seen) < 3:  # two rotations
        assert time.monotonic() < deadline, f"the client certificate was not renewed twice within 150 s (serials {seen})"
        assert vn.node_ready() == "True"
        time.sleep(1)
        if _serial(pem) != seen[-1]:
            seen.append(_serial(pem))
    # Each renewal was asked for by the node itself and auto-approved (selfnodeclient).
    csrs = [c for c in vn.cluster.kubectl_json("get", "csr")["items"]
            if c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet" and c["spec"]["username"] == f"system:node:{vn.name}"]
    assert len(csrs) >= 2 and all(c["spec"].get("expirationSeconds") == 600 for c in csrs)
    assert all(any(cond["type"] == "Approved" for cond in c["status"]["conditions"]) for c in csrs)
    log = vn.stack.log_file("vk").read_text().rsplit("--- localenv: starting vk", 1)[-1]  # this run's
    assert log.count("client certificate rotated") >= 2
    # Everything still works on the new certificate: the Lease, the pod watch, status, the kubelet API.
    renewed = vn.cluster.kubectl_json("get", "lease", vn.name, "-n", "kube-node-lease")["spec"]["renewTime"]
    vn.create(ns, vn.pod("after-rotation", [{"name": "main", "command": ["sh", "-c", "echo rotated fine"]}]))
    vn.wait_phase(ns, "after-rotation", "Succeeded", timeout=60)
    assert vn.logs(ns, "after-rotation") == "rotated fine\n"
    assert datetime.fromisoformat(renewed.replace("Z", "+00:00")) > datetime.now(UTC) - timedelta(seconds=30)
    assert vn.node_ready() == "True"
    assert "renewal failed" not in log


# -- bootstrap failures and adoption -----------------------------------------------------------------


def _run_vk(tmp: Path, cluster: ClusterHandle, stack: desktop_stack.Stack, node_name: str, bootstrap: Path,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """kod-vk, for a node of its own, with a fresh cert dir; waits until it exits."""
    config = tmp / "vk.toml"
    config.write_text(toml.dumps({
        "node": {"name": node_name, "user": stack.settings.user},
        "identity": {"bootstrap_kubeconfig": str(bootstrap), "cert_dir": str(tmp / "pki"), "csr_timeout_seconds": 60},
        "interlink": {"url": stack.interlink_url, "token_file": str(stack.interlink_token_file)},
        "kubelet_api": {"port": 0, "cert_dir": str(tmp / "pki")},
    }))
    exe = Path(sys.executable).parent / "kod-vk"
    return subprocess.run([str(exe), "--config", str(config)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _bootstrap_file(tmp: Path, cluster: ClusterHandle, token: str) -> Path:
    path = tmp / "bootstrap.kubeconfig"
    node_join.write_bootstrap_kubeconfig(path, cluster, token)
    return path


@pytest.mark.parametrize("how", ["deleted", "expired"])
def test_a_dead_bootstrap_token_says_what_to_do(virtual_node: VirtualNode, tmp_path: Path, how: str) -> None:
    cluster, node = virtual_node.cluster, f"{virtual_node.name}-deadtoken"
    if how == "deleted":
        token = node_join.create_bootstrap_token(cluster, node_name=node, minutes=10)
        node_join.delete_bootstrap_tokens(cluster, node)
    else:
        token_id, token_secret = secrets.token_hex(3), secrets.token_hex(8)
        secret = node_join.bootstrap_token_secret(token_id, token_secret, node_name=node, expires=datetime.now(UTC) - timedelta(minutes=1))
        cluster.kubectl("create", "-f", "-", input=json.dumps(secret))
        token = f"{token_id}.{token_secret}"
    bootstrap = _bootstrap_file(tmp_path, cluster, token)
    try:
        deadline = time.monotonic() + 30  # until the API server's view of token Secrets has caught up
        while node_join.whoami(cluster.kubectl_path, bootstrap) is not None:
            assert time.monotonic() < deadline, "the API server still accepts the token"
            time.sleep(0.5)
        proc = _run_vk(tmp_path, cluster, virtual_node.stack, node, bootstrap)
    finally:
        node_join.delete_bootstrap_tokens(cluster, node)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "bootstrap token expired or unknown" in proc.stderr
    assert "python -m localenv up" in proc.stderr and "ask your cluster admin for a new bootstrap token" in proc.stderr
    assert cluster.kubectl("get", "node", node, check=False).returncode != 0
    assert not (tmp_path / "pki" / "kubelet-client-current.pem").exists()


def _impostor(vn: VirtualNode, name: str, kind: str) -> dict[str, Any]:
    if kind == "real":  # as a kubelet registers it: the real node's labels under this name
        real = vn.cluster.kubectl_json("get", "node", vn.cluster.node_name)["metadata"]["labels"]
        node_labels = {**{k: v for k, v in real.items() if not k.startswith("node-role")}, "kubernetes.io/hostname": name}
        annotations: dict[str, str] = {}
    else:  # another user's desktop
        node_labels = {labels.NODE_TYPE: labels.VIRTUAL_KUBELET, labels.DESKTOP_OF: "someone-else"}
        annotations = {"kod.io/managed-by": "kod-vk"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": node_labels, "annotations": annotations}}


@pytest.mark.parametrize(("kind", "message"), [
    ("real", "already exists and is not a kod virtual node"),
    ("other-desktop", "is the virtual node of desktop user 'someone-else'"),
])
def test_a_node_that_is_not_this_desktops_is_never_adopted(virtual_node: VirtualNode, tmp_path: Path, kind: str, message: str) -> None:
    cluster, name = virtual_node.cluster, f"{virtual_node.name}-not-mine-{uuid.uuid4().hex[:4]}"
    cluster.apply(_impostor(virtual_node, name, kind))
    before = cluster.kubectl_json("get", "node", name)
    try:
        token = node_join.create_bootstrap_token(cluster, node_name=name, minutes=10)
        proc = _run_vk(tmp_path, cluster, virtual_node.stack, name, _bootstrap_file(tmp_path, cluster, token))
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert message in proc.stderr and "vk_bridge never takes over another node" in proc.stderr
        after = cluster.kubectl_json("get", "node", name)
        assert after["metadata"]["labels"] == before["metadata"]["labels"]
        assert not [t for t in after["spec"].get("taints") or [] if t["key"] == labels.VIRTUAL_NODE_TAINT_KEY]
        assert not after.get("status", {}).get("conditions")  # nothing posted in its name
        assert cluster.kubectl("get", "lease", name, "-n", "kube-node-lease", check=False).returncode != 0
        # The bootstrap token did get it a client certificate for that name (any token can, as
        # with every kubelet's TLS bootstrap: why it is short-lived and deleted once used).
        issued = [c for c in cluster.kubectl_json("get", "csr")["items"] if c["metadata"]["name"].startswith(f"kod-vk-client-{name}-")]
        assert issued and issued[0]["status"].get("certificate")
        # It stopped before asking for a serving certificate in that node's name.
        assert not [c for c in cluster.kubectl_json("get", "csr")["items"]
                    if c["spec"]["signerName"] == "kubernetes.io/kubelet-serving" and c["spec"]["username"] == f"system:node:{name}"]
    finally:
        node_join.delete_bootstrap_tokens(cluster, name)
        cluster.kubectl("delete", "node", name, "--ignore-not-found")
        for csr in cluster.kubectl_json("get", "csr")["items"]:
            if csr["spec"]["username"] in (f"system:node:{name}",) or name in csr["metadata"]["name"]:
                cluster.kubectl("delete", "csr", csr["metadata"]["name"], "--ignore-not-found")


# -- the kubelet API under a flood of bad tokens ------------------------------------------------------


def _token_reviews(vn: VirtualNode) -> int:
    """vk_bridge's count of TokenReviews sent, read through the API server (which calls the
    kubelet API with its client certificate: no TokenReview for that)."""
    metrics = vn.cluster.kubectl("get", "--raw", f"/api/v1/nodes/{vn.name}/proxy/metrics").stdout
    found = re.search(r'kod_vk_api_requests_total\{verb="POST",resource="tokenreviews"\} (\d+)', metrics)
    return int(found.group(1)) if found else 0


async def _flood(url: str, tokens: list[str]) -> list[tuple[int, str | None]]:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=64)) as session:
        async def one(token: str) -> tuple[int, str | None]:
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=aiohttp.ClientTimeout(total=60)) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After")
        return await asyncio.gather(*(one(t) for t in tokens))


def test_a_flood_of_bad_tokens_costs_a_bounded_number_of_token_reviews(virtual_node: VirtualNode) -> None:
    vn = virtual_node
    status = vn.node()["status"]
    address = next(a["address"] for a in status["addresses"] if a["type"] == "InternalIP")
    url = f"https://{address}:{status['daemonEndpoints']['kubeletEndpoint']['Port']}/containerLogs/default/x/y"
    before = _token_reviews(vn)
    started = time.monotonic()
    tokens = ["one-bad-token"] * 300 + [secrets.token_urlsafe(24) for _ in range(700)]
    answers = asyncio.run(_flood(url, tokens))
    elapsed = time.monotonic() - started
    reviews = _token_reviews(vn) - before
    codes = [code for code, _ in answers]
    assert set(codes) <= {401, 429}, sorted(set(codes))
    assert all(retry and int(retry) >= 1 for code, retry in answers if code == 429)
    # The defaults: a bucket of 20 refilled at 5 a second, and one review per distinct token (the
    # 300 repeats of one token are answered from its cached rejection: 401, not reviewed again).
    bound = 20 + 5 * elapsed + 1
    assert reviews <= bound, f"{reviews} TokenReviews for 1,000 bad requests in {elapsed:.1f} s (bound {bound:.0f})"
    assert [code for code, _ in answers[:300]] == [401] * 300
    assert codes.count(429) >= 700 - bound
    # The API server's own calls (client certificate) are not throttled: kubectl logs still works.
    assert _token_reviews(vn) >= 0 and vn.node_ready() == "True"
