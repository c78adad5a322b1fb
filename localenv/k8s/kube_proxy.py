"""kube-proxy in iptables mode (Debian's iptables uses the nf_tables backend; kube-proxy detects
it). Conntrack sysctls are left alone (it would try to raise nf_conntrack_max)."""

from __future__ import annotations

import json
from typing import Any

from localenv import procs
from localenv.k8s import probes
from localenv.k8s.context import Context


def config(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": ctx.kubeconfig("kube-proxy")},
        "mode": "iptables",
        "clusterCIDR": s.cluster_cidr,
        "hostnameOverride": s.node_name,
        "bindAddress": "0.0.0.0",
        "healthzBindAddress": f"127.0.0.1:{s.ports.kube_proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{s.ports.kube_proxy_metrics}",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def daemon(ctx: Context) -> procs.Daemon:
    p, s = ctx.paths, ctx.settings
    config_file = p.config_dir / "kube-proxy.json"
    return procs.Daemon(
        name="kube-proxy",
        argv=(ctx.k8s_binary("kube-proxy"), f"--config={config_file}", "--v=1"),
        run_dir=p.run_dir,
        logs_dir=p.logs_dir,
        files={config_file: json.dumps(config(ctx), indent=2) + "\n"},
        inputs=(p.kubeconfig_dir / "kube-proxy.kubeconfig",),
        ready=lambda: probes.ok(f"http://127.0.0.1:{s.ports.kube_proxy_healthz}/livez"),
        ready_timeout=ctx.settings.ready_timeout,
        ports=(s.ports.kube_proxy_healthz, s.ports.kube_proxy_metrics),
    )


def cleanup_argv(ctx: Context) -> list[str]:
    """`kube-proxy --cleanup`: removes its iptables rules (used by `down --wipe`)."""
    return [ctx.k8s_binary("kube-proxy"), "--cleanup"]
