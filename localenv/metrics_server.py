"""metrics-server (upstream, built from the Go module proxy by localenv.gobuild) beside the API
server: the aggregated `metrics.k8s.io/v1beta1` API behind `kubectl top pod` and `kubectl top node`.

    kubectl top ──► kube-apiserver ──(aggregation, front-proxy client cert)──► metrics-server
                     APIService v1beta1.metrics.k8s.io                         (a process on the
                     -> Service kube-system/metrics-server                      cluster host)
                        (no selector; an EndpointSlice with the host's address)
    metrics-server ──(every 15 s, its own client cert, verifying the cluster CA)──► each node's
        kubelet /metrics/resource (kod-worker's kubelet; the desktop's vk_bridge, vk_bridge.stats)

Its identity: a client certificate `kod:metrics-server` of the cluster CA (kubeconfig
metrics-server.kubeconfig), allowed nodes/metrics and nodes/stats (the kubelets authorize it with
a SubjectAccessReview), to read nodes and pods, to delegate authentication and authorization
(system:auth-delegator) and to read the front-proxy CA (extension-apiserver-authentication-reader).
Its serving certificate is of the cluster CA too, which the APIService's caBundle names, so the
API server verifies it (no insecureSkipTLSVerify).

It listens on the host's node address only (`ctx.node_ip`, the address of its EndpointSlice),
not on every address: the API server reaches it there (through the konnectivity server's
default route, which dials from this host), and so does its readiness probe; nothing needs it on
loopback, on the Docker and pod bridges' gateways, on IPv6 or on another interface of the host.
Wherever it is reachable, every request but /livez, /readyz and /healthz is authenticated
(client certificate of the cluster's client CA, a token by TokenReview, or the API server's
front-proxy certificate with its X-Remote-* headers) and authorized by a SubjectAccessReview:
`metrics.k8s.io` pods of a namespace for whoever may list them there (view, or the kod user role
of that namespace), nodes and /metrics for no user but the admins
(tests/e2e/test_security_streams.py).

It dials kubelets directly at their InternalIP and status port (--kubelet-use-node-status-port:
10250 for kod-worker, 10260 for a desktop's vk_bridge): a desktop that only the konnectivity tunnel
reaches (behind NAT) is not scraped, and `kubectl top` does not list it (docs/localenv.md).

    ensure(ctx) -> str       # certificates, objects, the daemon; idempotent, quick when running
"""

from __future__ import annotations

import base64
import json
from typing import Any

from localenv import gobuild, kubeconfig, pki, procs
from localenv.k8s import probes
from localenv.k8s.addons import FIELD_MANAGER
from localenv.k8s.context import Context
from localenv.shell import run

NAME = "metrics-server"
USER = "kod:metrics-server"
NAMESPACE = "kube-system"
API_GROUP = "metrics.k8s.io"
API_VERSION = "v1beta1"
APISERVICE = f"{API_VERSION}.{API_GROUP}"
#: How often it scrapes every kubelet (metrics-server's default; `kubectl top` shows the last).
RESOLUTION = "15s"


def binary(ctx: Context) -> str:
    return str(gobuild.metrics_server_build(ctx.paths).out_dir / NAME)


def serving_names(ctx: Context) -> list[str]:
    svc = f"{NAME}.{NAMESPACE}.svc"
    return ["127.0.0.1", "localhost", ctx.node_ip, NAME, f"{NAME}.{NAMESPACE}", svc, f"{svc}.cluster.local"]


def ensure_certs(ctx: Context) -> bool:
    """Its serving certificate and client kubeconfig (cluster CA); True when the kubeconfig changed."""
    d = ctx.paths.pki_dir
    pki.issue(d, f"{NAME}-serving", common_name=NAME, sans=serving_names(ctx), usages=("server",))
    pair = pki.issue(d, f"{NAME}-client", common_name=USER)
    creds = pki.CertPair(pair.cert, pair.key, ctx.paths.ca_cert)
    return kubeconfig.write(ctx.paths.kubeconfig_dir / f"{NAME}.kubeconfig",
                            kubeconfig.build(server=ctx.apiserver_url, user=USER, creds=creds))


def objects(ctx: Context) -> list[dict[str, Any]]:
    """RBAC, the Service and its EndpointSlice, and the APIService (built as data)."""
    user = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}
    rbac = "rbac.authorization.k8s.io/v1"
    port = ctx.settings.ports.metrics_server
    return [
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": "kod:metrics-server"},
         "rules": [
             {"apiGroups": [""], "resources": ["nodes/metrics", "nodes/stats"], "verbs": ["get"]},
             {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
         ]},
        {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": "kod:metrics-server"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kod:metrics-server"},
         "subjects": [user]},
        {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": "kod:metrics-server:auth-delegator"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
         "subjects": [user]},
        {"apiVersion": rbac, "kind": "RoleBinding",
         "metadata": {"name": "kod:metrics-server:auth-reader", "namespace": NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "extension-apiserver-authentication-reader"},
         "subjects": [user]},
        # Who may read the metrics: whoever may view (metrics-server's own aggregated role).
        {"apiVersion": rbac, "kind": "ClusterRole",
         "metadata": {"name": "kod:aggregated-metrics-reader", "labels": {
             "rbac.authorization.k8s.io/aggregate-to-view": "true", "rbac.authorization.k8s.io/aggregate-to-edit": "true",
             "rbac.authorization.k8s.io/aggregate-to-admin": "true"}},
         "rules": [{"apiGroups": [API_GROUP], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, "namespace": NAMESPACE},
         "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": NAME, "namespace": NAMESPACE,
                      "labels": {"kubernetes.io/service-name": NAME,
                                 "endpointslice.kubernetes.io/managed-by": "localenv.kod.io"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [ctx.node_ip], "conditions": {"ready": True}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": APISERVICE},
         "spec": {"group": API_GROUP, "version": API_VERSION, "groupPriorityMinimum": 100, "versionPriority": 100,
                  "service": {"name": NAME, "namespace": NAMESPACE, "port": 443},
                  "caBundle": base64.b64encode(ctx.paths.ca_cert.read_bytes()).decode()}},
    ]


def apply_objects(ctx: Context) -> str:
    doc = {"apiVersion": "v1", "kind": "List", "items": objects(ctx)}
    proc = run([ctx.paths.kubectl, f"--kubeconfig={ctx.paths.admin_kubeconfig}", "apply", "--server-side",
                f"--field-manager={FIELD_MANAGER}", "--force-conflicts", "-f", "-"], input=json.dumps(doc), timeout=120)
    changed = [line for line in proc.stdout.splitlines() if not line.endswith(" serverside-applied")]
    return f"{len(doc['items'])} objects applied" + (f" ({'; '.join(changed)})" if changed else "")


def daemon(ctx: Context) -> procs.Daemon:
    p, s = ctx.paths, ctx.settings
    pkid = p.pki_dir
    kc = ctx.kubeconfig(NAME)
    port = s.ports.metrics_server
    argv = (
        binary(ctx),
        f"--secure-port={port}",
        f"--bind-address={ctx.node_ip}",
        f"--tls-cert-file={pkid / f'{NAME}-serving.crt'}",
        f"--tls-private-key-file={pkid / f'{NAME}-serving.key'}",
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        # The aggregation layer's client (the API server's front-proxy certificate).
        f"--requestheader-client-ca-file={pkid / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--client-ca-file={p.client_ca_bundle}",
        # Kubelets' serving certificates are of the cluster CA: verify them.
        f"--kubelet-certificate-authority={p.ca_cert}",
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
        "--kubelet-use-node-status-port",
        f"--metric-resolution={RESOLUTION}",
        "--v=1",
    )
    return procs.Daemon(
        name=NAME,
        argv=argv,
        run_dir=p.run_dir,
        logs_dir=p.logs_dir,
        inputs=(p.ca_cert, p.client_ca_bundle, pkid / "front-proxy-ca.crt", pkid / f"{NAME}-serving.crt",
                p.kubeconfig_dir / f"{NAME}.kubeconfig", gobuild.metrics_server_build(p).stamp),
        ready=lambda: probes.ok(f"https://{ctx.node_ip}:{port}/livez", ca=p.ca_cert),
        ready_timeout=s.ready_timeout,
        ports=(port,),
    )


def api_status(ctx: Context) -> dict[str, Any]:
    """Whether the API server serves metrics.k8s.io (its APIService's Available condition)."""
    proc = run([ctx.paths.kubectl, f"--kubeconfig={ctx.paths.admin_kubeconfig}", "get", "apiservice", APISERVICE,
                "-o", "json"], check=False, timeout=10)
    if proc.returncode != 0:
        return {"available": False, "message": "the APIService is not registered"}
    conds = {c["type"]: c for c in json.loads(proc.stdout).get("status", {}).get("conditions", [])}
    available = conds.get("Available", {})
    return {"available": available.get("status") == "True", "message": available.get("message", "")}


def ensure(ctx: Context) -> str:
    """The certificates, the objects and the daemon (each left alone when already right)."""
    ensure_certs(ctx)
    applied = apply_objects(ctx)
    outcome, pid = procs.ensure(daemon(ctx))
    say = {"running": f"already running (pid {pid})", "started": f"started (pid {pid})",
           "restarted": f"restarted with a changed configuration (pid {pid})"}[outcome]
    return f"{say}; {applied}"
