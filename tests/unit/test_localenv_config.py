"""The cluster's daemons are configured as the VM needs (cgroup v1, no CAP_SYS_RESOURCE, a pod
network apart from Docker's) and as the security model requires (no anonymous access, webhook
authorization on the kubelet, RBAC + Node authorization)."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest

from kod import toml
from localenv import images_import, packages, settings
from localenv.k8s import apiserver, cni, containerd, context, controller_manager, kubelet
from localenv.paths import paths_for


@pytest.fixture
def ctx(tmp_path: Path) -> context.Context:
    s = settings.load(environ={}, data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    return context.Context(settings=s, paths=paths_for(s), node_ip="192.0.2.2")


def test_the_kubelet_runs_on_cgroup_v1_with_webhook_auth_and_no_read_only_port(ctx: context.Context) -> None:
    c = kubelet.config(ctx)
    assert c["failCgroupV1"] is False and c["cgroupDriver"] == "cgroupfs"
    assert c["readOnlyPort"] == 0
    assert c["authentication"]["anonymous"]["enabled"] is False
    assert c["authentication"]["webhook"]["enabled"] is True
    assert c["authorization"]["mode"] == "Webhook"
    assert c["containerRuntimeEndpoint"] == f"unix://{ctx.paths.containerd_socket}"


def test_containerd_restricts_oom_score_adj_and_uses_the_local_pause_image(ctx: context.Context) -> None:
    parsed = tomllib.loads(toml.dumps(containerd.config(ctx)))
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == images_import.normalize(containerd.PAUSE_IMAGE)
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert parsed["grpc"]["address"] == str(ctx.paths.containerd_socket)
    assert parsed["root"].startswith(str(ctx.paths.state_dir))


def test_the_api_server_allows_no_anonymous_requests_and_verifies_kubelets(ctx: context.Context) -> None:
    argv = apiserver.daemon(ctx).argv
    assert "--anonymous-auth=false" in argv
    assert "--authorization-mode=Node,RBAC" in argv
    assert "--enable-admission-plugins=NodeRestriction" in argv
    assert "--enable-bootstrap-token-auth" in argv  # desktops join with a bootstrap token
    assert f"--kubelet-certificate-authority={ctx.paths.ca_cert}" in argv


def test_the_controller_manager_signs_node_client_csrs_with_the_nodes_ca_and_allocates_node_cidrs(
        ctx: context.Context) -> None:
    argv = controller_manager.daemon(ctx).argv
    # Nodes' client certificates (a desktop's TLS bootstrap) from their own CA, every other signer
    # from the cluster CA; the one-CA flag cannot be combined with these.
    assert f"--cluster-signing-kubelet-client-cert-file={ctx.paths.node_client_ca_cert}" in argv
    assert f"--cluster-signing-kubelet-serving-cert-file={ctx.paths.ca_cert}" in argv
    assert f"--cluster-signing-kube-apiserver-client-cert-file={ctx.paths.ca_cert}" in argv
    assert not any(a.startswith("--cluster-signing-cert-file") for a in argv)
    assert "--allocate-node-cidrs=true" in argv
    # csrsigning and csrapproving are in "*"; the bootstrap-token controllers are not.
    assert "--controllers=*,bootstrapsigner,tokencleaner" in argv


def test_the_pod_and_service_ranges_do_not_clash_with_docker0(ctx: context.Context) -> None:
    docker0 = ipaddress.ip_network("172.17.0.0/16")
    for cidr in (ctx.settings.cluster_cidr, ctx.settings.service_cidr):
        assert not ipaddress.ip_network(cidr).overlaps(docker0)
    assert ctx.kubernetes_service_ip == "10.96.0.1"


def test_the_cni_template_leaves_the_pod_cidr_to_containerd(ctx: context.Context) -> None:
    t = json.loads(cni.template_text(ctx))
    types = [p["type"] for p in t["plugins"]]
    assert types == ["bridge", "portmap", "firewall"]
    assert t["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "{{.PodCIDR}}"}]]


@pytest.mark.parametrize(("ref", "name"), [
    ("kod/testbox:0.1.0", "docker.io/kod/testbox:0.1.0"),
    ("debian:bookworm-slim", "docker.io/library/debian:bookworm-slim"),
    ("busybox", "docker.io/library/busybox:latest"),
    ("localhost:5000/x/y:1", "localhost:5000/x/y:1"),
    ("registry.example.com/a/b", "registry.example.com/a/b:latest"),
])
def test_docker_references_map_to_containerd_names(ref: str, name: str) -> None:
    assert images_import.normalize(ref) == name


def test_the_package_list_is_per_component_and_flattens_without_duplicates() -> None:
    required = {"a": ("x", "y"), "b": ("y", "z")}
    assert packages.all_packages(required) == ["x", "y", "z"]
    assert "docker.io" in packages.all_packages()
    # what the e2e tests use is installed by `up`, not by the tests
    assert {"curl", "docker-compose"} <= set(packages.all_packages())


def test_a_package_that_does_not_exist_is_reported_missing() -> None:
    assert packages.missing(["dpkg", "kod-no-such-package"]) == ["kod-no-such-package"]


def test_toml_round_trips_nested_tables_and_quoted_keys() -> None:
    data = {"version": 2, "a": {"b.c": {"flag": True, "list": ["x", "y"], "n": 1.5}}, "s": 'q"uote'}
    assert tomllib.loads(toml.dumps(data)) == data
