"""localenv's metrics-server: the aggregated metrics.k8s.io API registered with a caBundle (the API
server verifies it), reached through a Service whose endpoint is the cluster host, with the
permissions the kubelets check (nodes/metrics, nodes/stats), and verifying the kubelets' serving
certificates against the cluster CA at each node's own kubelet port."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from localenv import gobuild, metrics_server, pki
from localenv.k8s import context
from localenv.paths import paths_for
from localenv.settings import load


@pytest.fixture
def ctx(tmp_path: Path) -> context.Context:
    s = load(environ={}, data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    c = context.Context(settings=s, paths=paths_for(s), node_ip="192.0.2.2")
    pki.ensure_ca(c.paths.pki_dir, pki.CLUSTER_CA, "kod-cluster-ca")
    return c


def _kind(ctx: context.Context, kind: str) -> list[dict]:
    return [o for o in metrics_server.objects(ctx) if o["kind"] == kind]


def test_the_apiservice_names_the_service_and_trusts_only_the_cluster_ca(ctx: context.Context) -> None:
    (api,) = _kind(ctx, "APIService")
    assert api["metadata"]["name"] == "v1beta1.metrics.k8s.io"
    spec = api["spec"]
    assert spec["service"] == {"name": "metrics-server", "namespace": "kube-system", "port": 443}
    assert base64.b64decode(spec["caBundle"]) == ctx.paths.ca_cert.read_bytes()
    assert "insecureSkipTLSVerify" not in spec


def test_the_service_leads_to_the_host_at_metrics_servers_port(ctx: context.Context) -> None:
    (svc,) = _kind(ctx, "Service")
    (eps,) = _kind(ctx, "EndpointSlice")
    port = ctx.settings.ports.metrics_server
    assert "selector" not in svc["spec"] and svc["spec"]["ports"][0]["targetPort"] == port
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "metrics-server"
    assert eps["endpoints"][0]["addresses"] == ["192.0.2.2"] and eps["ports"][0]["port"] == port


def test_it_may_read_the_kubelets_metrics_and_stats_and_nothing_more_of_nodes(ctx: context.Context) -> None:
    role = next(o for o in _kind(ctx, "ClusterRole") if o["metadata"]["name"] == "kod:metrics-server")
    rules = {(tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]}
    assert (("nodes/metrics", "nodes/stats"), ("get",)) in rules
    assert not any("nodes/proxy" in r["resources"] or "create" in r["verbs"] for r in role["rules"])
    bindings = {o["roleRef"]["name"]: o["subjects"] for o in metrics_server.objects(ctx) if "roleRef" in o}
    for role_name in ("kod:metrics-server", "system:auth-delegator", "extension-apiserver-authentication-reader"):
        assert bindings[role_name] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": metrics_server.USER}]


def test_the_daemon_verifies_kubelets_and_uses_each_nodes_own_port(ctx: context.Context) -> None:
    d = metrics_server.daemon(ctx)
    argv = d.argv
    assert argv[0] == str(gobuild.metrics_server_build(ctx.paths).out_dir / "metrics-server")
    assert f"--kubelet-certificate-authority={ctx.paths.ca_cert}" in argv
    assert "--kubelet-use-node-status-port" in argv  # 10260 for a desktop's vk_bridge
    assert not any("insecure" in a for a in argv)
    assert f"--secure-port={ctx.settings.ports.metrics_server}" in argv and d.ports == (ctx.settings.ports.metrics_server,)
    assert "--requestheader-allowed-names=front-proxy-client" in argv


def test_the_build_is_pinned_to_an_approved_release() -> None:
    gomod = (gobuild.GOBUILD_DIR / "metrics-server" / "go.mod").read_text()
    assert f"require sigs.k8s.io/metrics-server {gobuild.METRICS_SERVER_VERSION}\n" in gomod
    assert gobuild.METRICS_SERVER_VERSION == "v0.8.0"
