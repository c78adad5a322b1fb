"""What every component of the cluster is built from."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from localenv.paths import Paths
from localenv.settings import LocalEnvSettings


@dataclass(frozen=True)
class Context:
    """The settings, the paths and the node's address (detected once per `up`)."""

    settings: LocalEnvSettings
    paths: Paths
    node_ip: str

    @property
    def apiserver_url(self) -> str:
        """The URL of the API server for clients on this host."""
        return f"https://127.0.0.1:{self.settings.ports.apiserver}"

    @property
    def kubernetes_service_ip(self) -> str:
        """The ClusterIP of the `kubernetes` Service: the first address of the service range."""
        return str(next(ipaddress.ip_network(self.settings.service_cidr).hosts()))

    def k8s_binary(self, name: str) -> str:
        return str(self.paths.k8s_bin / name)

    def kubeconfig(self, name: str) -> str:
        return str(self.paths.kubeconfig_dir / f"{name}.kubeconfig")
