"""Every certificate and kubeconfig of the cluster, issued from its CAs (see localenv.pki).

Identities (user names are what RBAC sees):
- `kod-admin` in group `system:masters`: the admin kubeconfig.
- `system:kube-controller-manager`, `system:kube-scheduler`, `system:kube-proxy`: bound by
  Kubernetes' default RBAC policy.
- `system:node:<node>` in `system:nodes`: the real node's kubelet (Node authorizer), from the
  nodes' own client CA, as the controller-manager signs desktops' TLS-bootstrap certificates.
- `kube-apiserver-kubelet-client`: the API server calling kubelets (logs, exec); bound to
  `system:kubelet-api-admin` by localenv's addons.
- `kod:storage-provisioner`: the hostPath provisioner; its own ClusterRole.
"""

from __future__ import annotations

import socket

from localenv import kubeconfig, pki
from localenv.k8s.context import Context

ADMIN_USER = "kod-admin"
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
PROVISIONER_USER = "kod:storage-provisioner"
FRONT_PROXY_CLIENT = "front-proxy-client"

LOOPBACK = ("127.0.0.1", "localhost")
#: The client identities that are nodes: issued from the nodes' client CA.
NODE_IDENTITIES = frozenset({"kubelet"})


def client_identities(ctx: Context) -> dict[str, tuple[str, tuple[str, ...]]]:
    """kubeconfig name -> (common name, organizations)."""
    return {
        "admin": (ADMIN_USER, ("system:masters",)),
        "controller-manager": ("system:kube-controller-manager", ()),
        "scheduler": ("system:kube-scheduler", ()),
        "kubelet": (f"system:node:{ctx.settings.node_name}", ("system:nodes",)),
        "kube-proxy": ("system:kube-proxy", ()),
        "storage-provisioner": (PROVISIONER_USER, ()),
    }


def apiserver_names(ctx: Context) -> list[str]:
    return [
        *LOOPBACK, ctx.node_ip, ctx.kubernetes_service_ip, socket.gethostname(),
        "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
    ]


def kubelet_names(ctx: Context) -> list[str]:
    return [*LOOPBACK, ctx.node_ip, ctx.settings.node_name, socket.gethostname()]


def ensure_all(ctx: Context) -> list[str]:
    """Issue what is missing, changed or close to expiry; write the kubeconfigs. Returns the
    names of the kubeconfigs that changed."""
    d = ctx.paths.pki_dir
    pki.ensure_ca(d, pki.CLUSTER_CA, "kod-cluster-ca")
    pki.ensure_ca(d, pki.ETCD_CA, "kod-etcd-ca")
    pki.ensure_ca(d, pki.FRONT_PROXY_CA, "kod-front-proxy-ca")
    pki.ensure_ca(d, pki.NODE_CLIENT_CA, "kod-node-client-ca")
    pki.write_bundle(d, pki.CLIENT_CA_BUNDLE, (pki.CLUSTER_CA, pki.NODE_CLIENT_CA))
    pki.ensure_service_account_key(d)

    both: tuple[pki.Usage, ...] = ("server", "client")
    pki.issue(d, "etcd-server", common_name="kod-etcd", sans=LOOPBACK, usages=both, ca=pki.ETCD_CA)
    pki.issue(d, "etcd-peer", common_name="kod-etcd-peer", sans=LOOPBACK, usages=both, ca=pki.ETCD_CA)
    pki.issue(d, "apiserver-etcd-client", common_name="kube-apiserver-etcd-client", ca=pki.ETCD_CA)
    pki.issue(d, "apiserver", common_name="kube-apiserver", sans=apiserver_names(ctx), usages=("server",))
    pki.issue(d, "apiserver-kubelet-client", common_name=APISERVER_KUBELET_CLIENT)
    pki.issue(d, "front-proxy-client", common_name=FRONT_PROXY_CLIENT, ca=pki.FRONT_PROXY_CA)
    pki.issue(d, "controller-manager-serving", common_name="kube-controller-manager", sans=LOOPBACK,
              usages=("server",))
    pki.issue(d, "scheduler-serving", common_name="kube-scheduler", sans=LOOPBACK, usages=("server",))
    pki.issue(d, "kubelet-serving", common_name=f"system:node:{ctx.settings.node_name}",
              organizations=("system:nodes",), sans=kubelet_names(ctx), usages=("server",))

    changed = []
    for name, (cn, orgs) in client_identities(ctx).items():
        ca = pki.NODE_CLIENT_CA if name in NODE_IDENTITIES else pki.CLUSTER_CA
        pair = pki.issue(d, f"{name}-client", common_name=cn, organizations=orgs, ca=ca)
        # The kubeconfig verifies the API server: with the cluster CA, whichever CA signed the client.
        server_ca = pki.CertPair(pair.cert, pair.key, ctx.paths.ca_cert)
        config = kubeconfig.build(server=ctx.apiserver_url, user=cn, creds=server_ca)
        path = ctx.paths.admin_kubeconfig if name == "admin" else ctx.paths.kubeconfig_dir / f"{name}.kubeconfig"
        if kubeconfig.write(path, config):
            changed.append(name)
    return changed
