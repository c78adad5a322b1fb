"""The real node's kubelet, on the cluster's containerd.

cgroup v1 only on these VMs: `failCgroupV1: false` keeps Kubernetes 1.35's kubelet running on it
(1.35 is the last minor that allows this). Webhook authentication and authorization (the API
server decides who may read logs or exec), x509 client certificates from the cluster CA, its own
serving certificate from the same CA (the API server verifies it), no read-only port. Image
garbage collection is off: images cannot be pulled here, so an image collected is an image lost.
"""

from __future__ import annotations

import json
from typing import Any

from localenv import procs
from localenv.k8s import probes
from localenv.k8s.context import Context


def config(ctx: Context) -> dict[str, Any]:
    p, s = ctx.paths, ctx.settings
    endpoint = f"unix://{p.containerd_socket}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "0.0.0.0",
        "port": s.ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": s.ports.kubelet_healthz,
        "tlsCertFile": str(p.pki_dir / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(p.pki_dir / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(p.ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "podLogsDir": str(p.pod_logs),
        "clusterDomain": "cluster.local",
        "clusterDNS": [],
        "resolvConf": "/etc/resolv.conf",
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # The disk is shared with everything else on the machine: evict only when nearly full.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "2%",
            "nodefs.inodesFree": "2%",
            "imagefs.available": "2%",
        },
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "registerNode": True,
    }


def daemon(ctx: Context) -> procs.Daemon:
    p, s = ctx.paths, ctx.settings
    config_file = p.config_dir / "kubelet.json"
    for d in (p.kubelet_root, p.pod_logs):
        d.mkdir(parents=True, exist_ok=True)
    argv = (
        ctx.k8s_binary("kubelet"),
        f"--config={config_file}",
        f"--kubeconfig={ctx.kubeconfig('kubelet')}",
        f"--hostname-override={s.node_name}",
        f"--node-ip={ctx.node_ip}",
        f"--root-dir={p.kubelet_root}",
        "--v=1",
    )
    return procs.Daemon(
        name="kubelet",
        argv=argv,
        run_dir=p.run_dir,
        logs_dir=p.logs_dir,
        files={config_file: json.dumps(config(ctx), indent=2) + "\n"},
        inputs=(p.ca_cert, p.kubeconfig_dir / "kubelet.kubeconfig", p.pki_dir / "kubelet-serving.crt"),
        ready=lambda: probes.ok(f"http://127.0.0.1:{s.ports.kubelet_healthz}/healthz"),
        ready_timeout=ctx.settings.ready_timeout,
        stop_timeout=30.0,
        ports=(s.ports.kubelet, s.ports.kubelet_healthz),
    )
