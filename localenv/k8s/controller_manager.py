"""kube-controller-manager: node CIDR allocation, service-account tokens and the root CA in every
namespace, the CSR signer (csrsigning, the cluster CA: a virtual kubelet's client and serving
certificates are signed by it, so the API server accepts and verifies them), the CSR approver
(csrapproving: node client CSRs of bootstrap tokens whose group may create
`certificatesigningrequests/nodeclient`, and renewals of nodes that may create `.../selfnodeclient`;
never serving CSRs), bootstrapsigner and tokencleaner (off by default: they sign
kube-public/cluster-info and delete expired bootstrap tokens), and the default controllers
(garbage collector, TTL-after-finished, ...). One instance, so no leader election."""

from __future__ import annotations

from localenv import procs
from localenv.k8s import probes
from localenv.k8s.context import Context


def daemon(ctx: Context) -> procs.Daemon:
    p, s = ctx.paths, ctx.settings
    pki = p.pki_dir
    kubeconfig = ctx.kubeconfig("controller-manager")
    argv = (
        ctx.k8s_binary("kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={s.ports.controller_manager}",
        f"--tls-cert-file={pki / 'controller-manager-serving.crt'}",
        f"--tls-private-key-file={pki / 'controller-manager-serving.key'}",
        f"--client-ca-file={p.client_ca_bundle}",
        # One signer per CSR signer name: nodes' client certificates (a desktop's TLS bootstrap)
        # from the nodes' own CA, the only one the tunnel server takes agents from; the others
        # (kubelets' serving certificates, other clients) from the cluster CA.
        f"--cluster-signing-kubelet-client-cert-file={p.node_client_ca_cert}",
        f"--cluster-signing-kubelet-client-key-file={p.node_client_ca_key}",
        f"--cluster-signing-kubelet-serving-cert-file={p.ca_cert}",
        f"--cluster-signing-kubelet-serving-key-file={p.ca_key}",
        f"--cluster-signing-kube-apiserver-client-cert-file={p.ca_cert}",
        f"--cluster-signing-kube-apiserver-client-key-file={p.ca_key}",
        f"--cluster-signing-legacy-unknown-cert-file={p.ca_cert}",
        f"--cluster-signing-legacy-unknown-key-file={p.ca_key}",
        f"--root-ca-file={p.ca_cert}",
        # Every default controller (csrsigning and csrapproving among them) plus the two
        # bootstrap-token controllers, which are off by default.
        "--controllers=*,bootstrapsigner,tokencleaner",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        "--use-service-account-credentials=true",
        "--allocate-node-cidrs=true",
        f"--cluster-cidr={s.cluster_cidr}",
        f"--node-cidr-mask-size={s.node_cidr_mask}",
        f"--service-cluster-ip-range={s.service_cidr}",
        # Nodes turn NotReady 30-32 s after their last Lease renewal (default 50 s). Issue 3 wants a
        # dead virtual kubelet's node NotReady within 45 s; kubelets renew every 10 s, so 30 s still
        # tolerates two missed renewals, and on a one-machine cluster the API server is on loopback.
        "--node-monitor-grace-period=30s",
        "--node-monitor-period=2s",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    )
    return procs.Daemon(
        name="kube-controller-manager",
        argv=argv,
        run_dir=p.run_dir,
        logs_dir=p.logs_dir,
        inputs=(p.ca_cert, p.client_ca_bundle, p.node_client_ca_cert, p.kubeconfig_dir / "controller-manager.kubeconfig",
                pki / "controller-manager-serving.crt", pki / "sa.key"),
        ready=lambda: probes.ok(f"https://127.0.0.1:{s.ports.controller_manager}/healthz", ca=p.ca_cert),
        ready_timeout=ctx.settings.ready_timeout,
        ports=(s.ports.controller_manager,),
    )
