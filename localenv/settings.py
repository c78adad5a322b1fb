"""Settings of the local environment, loaded once in `main` (`load()`) and passed down.

Every field can be overridden with an environment variable `KOD_LOCALENV_<FIELD>` (for example
`KOD_LOCALENV_NODE_NAME=worker-1`) or in `~/.config/kod/localenv.toml`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, Field

from kod.settings import config_home, load_settings

ENV_PREFIX = "KOD_LOCALENV_"

#: The pinned Kubernetes release. Why v1.35: this VM type has cgroup v1 only, and v1.35 is the
#: newest minor whose kubelet still runs on cgroup v1 (with `failCgroupV1: false`) and that still
#: supports containerd 1.x (Debian 12 ships containerd 1.6; Kubernetes 1.36 requires containerd
#: 2.x). v1.35.8 is the latest patch of that minor on the Go module proxy.
KUBERNETES_VERSION = "v1.35.8"
#: The etcd release that Kubernetes 1.35 is tested with.
ETCD_VERSION = "v3.6.5"


class Ports(BaseModel):
    """TCP ports of the cluster's daemons. All but the API server's and the kubelet's listen on
    127.0.0.1 only."""

    apiserver: int = Field(default=6443, description="kube-apiserver (all addresses: pods and the desktop reach it)")
    etcd_client: int = Field(default=2379, description="etcd clients (127.0.0.1)")
    etcd_peer: int = Field(default=2380, description="etcd peers (127.0.0.1; one member)")
    etcd_metrics: int = Field(default=2381, description="etcd /health and /metrics over plain HTTP (127.0.0.1)")
    controller_manager: int = Field(default=10257, description="kube-controller-manager /healthz (127.0.0.1)")
    scheduler: int = Field(default=10259, description="kube-scheduler /healthz (127.0.0.1)")
    kubelet: int = Field(default=10250, description="the real node's kubelet API (all addresses)")
    kubelet_healthz: int = Field(default=10248, description="kubelet /healthz (127.0.0.1)")
    kube_proxy_healthz: int = Field(default=10256, description="kube-proxy /livez (127.0.0.1)")
    kube_proxy_metrics: int = Field(default=10249, description="kube-proxy /metrics (127.0.0.1)")
    konnectivity: int = Field(default=8132, description="the konnectivity server's port for agents (all addresses: "
                              "desktops behind NAT dial in; mTLS)")
    konnectivity_health: int = Field(default=8133, description="konnectivity server /healthz (127.0.0.1)")
    konnectivity_admin: int = Field(default=8134, description="konnectivity server admin (127.0.0.1)")
    konnectivity_node_agent_health: int = Field(default=8135, description="the real node's konnectivity agent /readyz (127.0.0.1)")
    konnectivity_node_agent_admin: int = Field(default=8136, description="the real node's konnectivity agent admin (127.0.0.1)")
    metrics_server: int = Field(default=10251, description="metrics-server, the metrics.k8s.io API behind `kubectl top` "
                                "(all addresses: the API server reaches it through a Service)")


class LocalEnvSettings(BaseModel):
    """What `python -m localenv` sets up, and where."""

    data_dir: Path = Field(
        default_factory=lambda: Path.home() / ".local/share/kod",
        description="Persistent state: the cluster under <data_dir>/cluster, kubectl under <data_dir>/bin",
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache/kod",
        description="Build caches (Kubernetes and etcd binaries, the base image's rootfs tarball)",
    )
    kubernetes_version: str = Field(default=KUBERNETES_VERSION, description="Kubernetes release to build")
    etcd_version: str = Field(default=ETCD_VERSION, description="etcd release to build")
    node_name: str = Field(
        default="kod-worker",
        description="Name of the cluster's one real node (deliberately not the hostname: the "
        "desktop's virtual node takes a hostname-derived name)",
    )
    cluster_cidr: str = Field(default="10.244.0.0/16", description="Pod addresses of the whole cluster")
    node_cidr_mask: int = Field(default=24, description="Prefix length of each node's share of cluster_cidr")
    service_cidr: str = Field(default="10.96.0.0/16", description="ClusterIP range of Services")
    node_port_range: str = Field(default="30000-32767", description="NodePort range")
    cni_bridge: str = Field(default="kod0", description="Linux bridge the pods of the real node attach to")
    storage_class: str = Field(default="kod-hostpath", description="The default StorageClass (dynamic hostPath)")
    ports: Ports = Field(default_factory=lambda: Ports(), description="TCP ports of the daemons")
    ready_timeout: float = Field(default=120.0, description="Seconds to wait for each daemon to become ready")
    konnectivity: bool = Field(
        default=True, description="Route the API server's traffic to nodes through a konnectivity server, so "
        "that desktops behind NAT (which the API server cannot dial) serve `kubectl logs` over a connection "
        "they dial out (localenv.konnectivity, docs/home.md)",
    )


def load(environ: Mapping[str, str] | None = None, **overrides: object) -> LocalEnvSettings:
    """Defaults < ~/.config/kod/localenv.toml < KOD_LOCALENV_* < `overrides`."""
    return load_settings(
        LocalEnvSettings,
        config_home() / "kod/localenv.toml",
        env_prefix=ENV_PREFIX,
        environ=environ,
        overrides=overrides,
    )
