"""kube-apiserver: Node and RBAC authorization with NodeRestriction admission (a kubelet, and a
desktop's virtual kubelet, may touch only its own Node, Lease and pods and what those pods
reference), bootstrap-token authentication (a desktop joins with a short-lived token and gets
its node's client certificate through a CSR, as a kubelet's TLS bootstrap does), no anonymous
requests, TLS everywhere; service-account tokens signed with the cluster's key; it verifies
kubelets' serving certificates against the cluster CA and presents its own client certificate to
them (a virtual kubelet that serves the kubelet API can verify that certificate against the same
CA). With `konnectivity` (the default) its "cluster" traffic (kubelets, pods, Services) goes
through the konnectivity server's socket (localenv.konnectivity: nodes behind NAT are reached
over connections they dial out). A change of these flags restarts it (`procs.Daemon`'s
fingerprint includes the command line and the egress selector file)."""

from __future__ import annotations

from pathlib import Path

from localenv import konnectivity, procs
from localenv.k8s import certs, probes
from localenv.k8s.context import Context

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


def daemon(ctx: Context) -> procs.Daemon:
    p, s = ctx.paths, ctx.settings
    pki = p.pki_dir
    argv = (
        ctx.k8s_binary("kube-apiserver"),
        f"--advertise-address={ctx.node_ip}",
        "--bind-address=0.0.0.0",
        f"--secure-port={s.ports.apiserver}",
        f"--etcd-servers=https://127.0.0.1:{s.ports.etcd_client}",
        f"--etcd-cafile={pki / 'etcd-ca.crt'}",
        f"--etcd-certfile={pki / 'apiserver-etcd-client.crt'}",
        f"--etcd-keyfile={pki / 'apiserver-etcd-client.key'}",
        # Users' and components' certificates (cluster CA) and nodes' (their own CA).
        f"--client-ca-file={p.client_ca_bundle}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--kubelet-certificate-authority={p.ca_cert}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        # Node names (kod-worker, a virtual node's name) do not resolve: reach kubelets by address.
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
        # The aggregation layer (and the requestheader CA that the controller-manager and the
        # scheduler read from the extension-apiserver-authentication ConfigMap).
        f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
        f"--requestheader-allowed-names={certs.FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        # Secrets of type bootstrap.kubernetes.io/token in kube-system authenticate as
        # system:bootstrap:<id>; the controller-manager's tokencleaner removes expired ones.
        "--enable-bootstrap-token-auth",
        "--anonymous-auth=false",
        "--allow-privileged=true",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={s.service_cidr}",
        f"--service-node-port-range={s.node_port_range}",
        "--profiling=false",
        "--v=1",
    )
    files: dict[Path, str] = {}
    if s.konnectivity:
        files[konnectivity.egress_config_path(ctx)] = konnectivity.egress_config(ctx)
        argv += (f"--egress-selector-config-file={konnectivity.egress_config_path(ctx)}",)
    return procs.Daemon(
        name="kube-apiserver",
        argv=argv,
        run_dir=p.run_dir,
        logs_dir=p.logs_dir,
        files=files,
        inputs=(p.ca_cert, p.client_ca_bundle, pki / "front-proxy-client.crt", pki / "apiserver.crt", pki / "apiserver-kubelet-client.crt", pki / "sa.pub"),
        ready=lambda: probes.ok(
            f"{ctx.apiserver_url}/readyz", ca=p.ca_cert,
            cert=pki / "admin-client.crt", key=pki / "admin-client.key",
        ),
        ready_timeout=ctx.settings.ready_timeout,
        # Its graceful shutdown waits for long-running requests; all its state is in etcd, so a
        # quick SIGKILL costs nothing and keeps restarts short.
        stop_timeout=5.0,
        ports=(s.ports.apiserver,),
    )
