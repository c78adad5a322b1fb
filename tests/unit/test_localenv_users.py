"""The local cluster's users and the registry of virtual nodes, as data: each user's objects, the
kubeconfig cloudify runs with, the second desktop's settings, the registry's values; and the
shipped manifests agreeing with them (the policy's parameter is the registry localenv keeps, the
user role grants what cloudify calls and nothing that joins or reads others). The real thing runs
in tests/e2e/test_security_namespaces.py and test_security_admission.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kod import errors
from localenv import desktop_stack, node_registry, users
from localenv.handle import ClusterHandle
from localenv.paths import paths_for
from localenv.settings import LocalEnvSettings

KUSTOMIZATIONS = Path(__file__).resolve().parents[2] / "kustomizations"


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_a_users_namespace_gets_cloudifys_role_for_that_user_only() -> None:
    ns, binding = users.namespace_objects("alice", "kod-alice", with_binding=True)
    assert ns["kind"] == "Namespace" and ns["metadata"]["name"] == "kod-alice"
    assert binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] == "kod-alice"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kod-cloudify-user"}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
    assert users.namespace_objects("alice", "kod-alice", with_binding=False) == [ns]


def test_cloudify_runs_with_the_users_own_kubeconfig_on_the_local_cluster(tmp_path: Path) -> None:
    settings = LocalEnvSettings(data_dir=tmp_path)
    cluster = ClusterHandle(kubeconfig=tmp_path / "admin.kubeconfig", kubectl_path=tmp_path / "kubectl",
                            node_name="kod-worker", settings=settings)
    mine = users.kubeconfig_path(paths_for(settings), "alice")
    assert mine == tmp_path / "cluster/users/alice.kubeconfig"
    assert users.cloudify_kubeconfig(cluster, "alice") == cluster.kubeconfig  # not made yet
    mine.parent.mkdir(parents=True)
    mine.write_text("{}")
    assert users.cloudify_kubeconfig(cluster, "alice") == mine
    reused = ClusterHandle(kubeconfig=tmp_path / "theirs", kubectl_path=tmp_path / "kubectl", node_name="n",
                           reused=True, settings=settings)
    assert users.cloudify_kubeconfig(reused, "alice") == tmp_path / "theirs"


def test_cloudify_and_localenv_agree_on_where_a_users_kubeconfig_is(tmp_path: Path) -> None:
    from cloudify import settings as cs

    settings = LocalEnvSettings(data_dir=tmp_path / ".local/share/kod")
    path = users.kubeconfig_path(paths_for(settings), "alice")
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    host = cs.HostEnv(home=tmp_path, login="alice")
    assert cs.kubeconfig_path(cs.CloudifySettings(), host) == path


def test_bad_user_names_are_refused(tmp_path: Path) -> None:
    cluster = ClusterHandle(kubeconfig=tmp_path / "k", kubectl_path=tmp_path / "kubectl", node_name="n")
    with pytest.raises(errors.InvalidInput, match="user name"):
        users.ensure(cluster, "a/b")


def test_the_second_desktop_is_a_private_stack_of_user_b() -> None:
    base = desktop_stack.StackSettings(node_name="desktop-box", user="alice", admission_allow=["team"])
    b = users.second_stack_settings(base)
    assert (b.node_name, b.user, b.owner_namespace, b.allowed) == ("desktop-box-bob", "bob", "kod-bob", ["kod-bob"])
    assert b.sidecar_name != base.sidecar_name and b.directory != base.directory
    assert len({b.interlink_port, b.sidecar_port, b.kubelet_port} & {base.interlink_port, base.sidecar_port, base.kubelet_port}) == 0


def test_the_stack_writes_its_owner_and_allow_list_into_vk_bridges_settings(tmp_path: Path) -> None:
    settings = desktop_stack.StackSettings(node_name="desktop-box", user="alice", admission_allow=["ci/builder"])
    cluster = ClusterHandle(kubeconfig=tmp_path / "k", kubectl_path=tmp_path / "kubectl", node_name="n")
    stack = desktop_stack.Stack(settings=settings, root=tmp_path, cluster=cluster)
    assert desktop_stack.configs(stack)["vk"]["admission"] == {"owner_namespace": "kod-alice", "allow": ["ci/builder"]}
    assert settings.allowed == ["kod-alice", "ci/builder"]
    assert node_registry.value(settings.allowed) == "kod-alice,ci/builder"


@pytest.mark.parametrize("bad", [[], [""], ["a,b"]])
def test_registry_values_need_an_owner_and_no_commas(bad: list[str]) -> None:
    with pytest.raises(errors.InvalidInput):
        node_registry.value(bad)


def test_the_policys_parameter_is_the_registry_localenv_keeps() -> None:
    [binding] = load(KUSTOMIZATIONS / "admission/binding.yaml")
    [policy] = load(KUSTOMIZATIONS / "admission/policy.yaml")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    ref = binding["spec"]["paramRef"]
    assert (ref["name"], ref["namespace"]) == (node_registry.NAME, node_registry.NAMESPACE)
    # A missing registry must not refuse every pod of the cluster: the policy handles it.
    assert ref["parameterNotFoundAction"] == "Allow"
    assert policy["spec"]["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
    assert policy["spec"]["failurePolicy"] == "Fail"
    [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
    assert set(rule["resources"]) == {"pods", "pods/binding", "bindings"}
    kustomization = yaml.safe_load((KUSTOMIZATIONS / "kustomization.yaml").read_text())
    assert {"admission", "users"} <= set(kustomization["resources"])
    # The keep-alive binding: the policy always has a binding (kubernetes/kubernetes#130887), one
    # that audits only and matches no namespace.
    [keepalive] = load(KUSTOMIZATIONS / "admission/binding-keepalive.yaml")
    assert keepalive["spec"]["policyName"] == policy["metadata"]["name"]
    assert keepalive["spec"]["validationActions"] == ["Audit"]
    assert keepalive["spec"]["paramRef"] == ref
    assert keepalive["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {"kod.io/matches": "nothing"}
    admission = yaml.safe_load((KUSTOMIZATIONS / "admission/kustomization.yaml").read_text())
    assert admission["resources"] == ["policy.yaml", "binding.yaml", "binding-keepalive.yaml"]


def test_the_user_role_is_what_cloudify_needs_and_nothing_that_joins_or_reaches_others() -> None:
    [role] = load(KUSTOMIZATIONS / "users/clusterrole-user.yaml")
    assert role["metadata"]["name"] == users.USER_ROLE
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    for resource in ("pods", "services", "secrets", "persistentvolumeclaims"):
        assert {("", resource, v) for v in ("create", "get", "list", "watch", "delete")} <= granted
    assert {("batch", "jobs", "create"), ("", "pods/log", "get"), ("", "pods/portforward", "create"), ("", "events", "list")} <= granted
    resources = {r for _, r, _ in granted}
    assert not resources & {"endpoints", "endpointslices", "roles", "rolebindings", "serviceaccounts/token", "nodes", "*"}
    assert not any(v == "*" for _, _, v in granted)
    nodes_role, nodes_binding = load(KUSTOMIZATIONS / "users/clusterrole-nodes.yaml")
    assert nodes_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    assert nodes_binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": users.GROUP}]
