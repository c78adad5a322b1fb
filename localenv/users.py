"""The local cluster's users: each a client certificate signed by the cluster CA, in a kubeconfig
of its own (0600), and a namespace `kod-<user>` in which cloudify's role is bound for that user
only (the ClusterRole `kod-cloudify-user` of `kustomizations/users`, by a RoleBinding); the
group `kod:users` may read Nodes (cloudify's preflight).

    from localenv import users
    alice = users.ensure(cluster, "alice")      # idempotent
    alice.kubeconfig                            # ~/.local/share/kod/cluster/users/alice.kubeconfig
    alice.namespace                             # kod-alice

The desktop stack makes its owner's user when it comes up (`localenv.desktop_stack.up`): the
machine's user (A), and `SECOND_USER` (B) for the second desktop (`second_stack_settings()`),
which the security tests start to attack one user's desktop with the other's real credentials.
cloudify finds A's kubeconfig by itself (`cloudify.settings.kubeconfig_path`: the same path).

On a reused cluster (KUBECONFIG names another one) localenv cannot sign certificates: only the
namespace is made, and cloudify uses the kubeconfig it was given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kod import errors, labels, names
from localenv import kubeconfig, pki
from localenv import settings as localenv_settings
from localenv.handle import ClusterHandle
from localenv.paths import Paths, paths_for

if TYPE_CHECKING:
    from localenv.desktop_stack import StackSettings

#: Every user's certificate is in this group, which may read Nodes.
GROUP = "kod:users"
#: The ClusterRole bound in each user's namespace (kustomizations/users).
USER_ROLE = "kod-cloudify-user"
ROLE_BINDING = "kod-cloudify"
#: User B of the local cluster, with the second desktop.
SECOND_USER = "bob"


@dataclass(frozen=True)
class User:
    """A user of the cluster as cloudify sees it."""

    name: str
    namespace: str
    #: The user's own kubeconfig (0600); None on a reused cluster.
    kubeconfig: Path | None


def _paths(cluster: ClusterHandle) -> Paths:
    return paths_for(cluster.settings or localenv_settings.load())


def kubeconfig_path(paths: Paths, name: str) -> Path:
    """Where the user's kubeconfig is: <state_dir>/users/<name>.kubeconfig (cloudify looks there)."""
    return paths.state_dir / "users" / f"{name}.kubeconfig"


def namespace_objects(name: str, namespace: str, *, with_binding: bool) -> list[dict[str, Any]]:
    """The user's namespace and the RoleBinding of cloudify's role there to that user only."""
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {labels.USER: name, labels.MANAGED_BY: "localenv"}},
    }]
    if with_binding:
        objects.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": ROLE_BINDING, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER_ROLE},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}],
        })
    return objects


def _server(cluster: ClusterHandle) -> str:
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    return str(admin["clusters"][0]["cluster"]["server"])


def ensure(cluster: ClusterHandle, name: str) -> User:
    """The user `name`: certificate (CN=name, O=kod:users), kubeconfig (0600), namespace
    kod-<name> and the RoleBinding there. Idempotent; the certificate is renewed by `pki.issue`
    when it nears expiry. Needs the cluster's admin credentials (`cluster.kubectl`)."""
    if not names.is_label_value(name) or not name:
        raise errors.InvalidInput(f"user name {name!r} must be a label value (letters, digits, '-', '_', '.')")
    namespace = names.user_namespace(name)
    paths = _paths(cluster)
    local = not cluster.reused and paths.ca_key.exists()
    cluster.apply(*namespace_objects(name, namespace, with_binding=local))
    if not local:
        return User(name=name, namespace=namespace, kubeconfig=None)
    pair = pki.issue(paths.pki_dir, f"user-{name}", common_name=name, organizations=(GROUP,), usages=("client",))
    path = kubeconfig_path(paths, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    kubeconfig.write(path, kubeconfig.build(server=_server(cluster), user=name, creds=pair))
    return User(name=name, namespace=namespace, kubeconfig=path)


def cloudify_kubeconfig(cluster: ClusterHandle, name: str) -> Path:
    """The kubeconfig cloudify runs with for user `name`: theirs on the local cluster, the one
    given on a reused cluster."""
    path = kubeconfig_path(_paths(cluster), name)
    return path if not cluster.reused and path.exists() else cluster.kubeconfig


def second_stack_settings(base: StackSettings | None = None) -> StackSettings:
    """The desktop stack of user B: the machine's stack settings made private (its own node
    `<node>-bob`, ports, directory and Docker labels) and owned by SECOND_USER."""
    from localenv import desktop_stack

    base = base or desktop_stack.load_stack_settings()
    return base.private(SECOND_USER, port_offset=500, kubelet_port_offset=5, user=SECOND_USER, admission_allow=[])
