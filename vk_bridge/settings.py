"""vk_bridge's settings: one object, loaded once in `main` and passed down.

Loaded with `kod.settings.load_settings(VkSettings, path, env_prefix=ENV_PREFIX)`: defaults, then
the TOML file (`~/.config/kod/vk.toml` by default), then `KOD_VK_*` environment variables
(`KOD_VK_NODE__NAME=my-desktop`, `KOD_VK_INTERLINK__URL=http://127.0.0.1:3000`), then flags.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kod.settings import config_home

ENV_PREFIX = "KOD_VK_"
DEFAULT_CONFIG = "~/.config/kod/vk.toml"

#: Default port of the kubelet API. A real kubelet on the same machine owns 10250.
DEFAULT_KUBELET_PORT = 10260
#: Retry delays (seconds) for Kubernetes and InterLink calls; the number of entries is the number
#: of retries. Only 5xx/429/connection errors are retried (`kod.errors.is_retryable`).
DEFAULT_BACKOFF: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def default_node_name(hostname: str | None = None) -> str:
    """`desktop-<hostname>`, lower-cased and reduced to a valid DNS-1123 subdomain."""
    host = (hostname or socket.gethostname()).lower()
    host = re.sub(r"[^a-z0-9.-]+", "-", host).strip("-.") or "localhost"
    return f"desktop-{host}"[:253].rstrip("-.")


class NodeSettings(Section):
    """The Node object vk_bridge registers."""

    name: str = Field(default_factory=default_node_name, description="Node name; default desktop-<hostname>.")
    user: str = Field(default="", description="Desktop user for the kod.io/desktop-of label; default: $USER in main.")
    address: str | None = Field(
        default=None,
        description="InternalIP the API server uses to reach the kubelet API; default: the local "
        "address of the route towards the API server.",
    )
    hostname: str = Field(default_factory=socket.gethostname, description="Hostname address of the node.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra node labels.")
    capacity: dict[str, str] = Field(
        default_factory=dict,
        description='Capacity overrides ("cpu": "4", "memory": "8Gi", "pods": "110"); '
        "else from the provider's ping, else from the host.",
    )
    taint: bool = Field(default=True, description="Put the kod.io/virtual-node:NoSchedule taint on the node.")
    lease_duration_seconds: int = Field(default=40, ge=10, description="Lease duration written in the Lease.")
    lease_renew_seconds: float = Field(
        default=10.0, gt=0, description="How often the Lease is renewed (the node lifecycle controller's "
        "grace period must be larger; 10 s like the kubelet)."
    )
    status_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often node status (conditions, capacity) is re-posted when nothing changed."
    )
    ping_interval_seconds: float = Field(default=15.0, gt=0, description="How often the provider is pinged for health and capacity.")

    @field_validator("name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", value) or len(value) > 253:
            raise ValueError(f"node name {value!r} is not a valid DNS-1123 subdomain")
        return value


class KubeSettings(Section):
    """How vk_bridge reaches the API server."""

    kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig file; unset: in-cluster config when running in a pod, else ~/.kube/config."
    )
    context: str | None = Field(default=None, description="Kubeconfig context; default the current one.")
    backoff: tuple[float, ...] = Field(default=DEFAULT_BACKOFF, description="Retry delays in seconds.")
    request_timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of one non-watch request.")
    watch_timeout_seconds: int = Field(
        default=300, ge=10, description="Server-side timeout of one watch request; the client re-watches from the "
        "last resourceVersion (no re-list), so an idle stream costs one request per this many seconds."
    )


class InterLinkSettings(Section):
    """How vk_bridge reaches InterLink."""

    url: str = Field(default="http://127.0.0.1:3000", description="http://host:port or unix:///path/to.sock.")
    token_file: Path | None = Field(
        default_factory=lambda: config_home() / "kod" / "interlink.token",
        description="File holding InterLink's bearer token (mode 0600); interlink's own default file.",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of one request (not of streams).")
    backoff: tuple[float, ...] = Field(default=DEFAULT_BACKOFF, description="Retry delays in seconds.")


class KubeletApiSettings(Section):
    """The kubelet HTTPS API that the API server calls (`kubectl logs`)."""

    host: str = Field(default="0.0.0.0", description="Listen address.")
    port: int = Field(default=DEFAULT_KUBELET_PORT, ge=0, le=65535, description="Listen port; 0 picks a free one.")
    cert_file: Path | None = Field(default=None, description="Serving certificate (PEM); unset: request one with a CSR.")
    key_file: Path | None = Field(default=None, description="Its private key (PEM).")
    cert_dir: Path = Field(
        default=Path("~/.local/share/kod/vk/pki"),
        description="Where a certificate obtained through a CSR (signer kubernetes.io/kubelet-serving) is kept.",
    )
    csr_timeout_seconds: float = Field(default=300.0, gt=0, description="How long to wait for the CSR to be approved and signed.")
    client_ca_file: Path | None = Field(
        default=None,
        description="CA that signs client certificates; unset: read client-ca-file from the "
        "kube-system/extension-apiserver-authentication ConfigMap.",
    )
    auth_cache_seconds: float = Field(default=60.0, ge=0, description="How long an allowed TokenReview/SubjectAccessReview is cached.")


class PodSettings(Section):
    """The pod sync loop."""

    workers: int = Field(default=16, ge=1, le=256, description="Pods reconciled concurrently.")
    retry_backoff: tuple[float, ...] = Field(
        default=(1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
        description="Delays before retrying a pod whose start failed for a reason that may go away "
        "(a missing Secret, InterLink unavailable); the last one repeats.",
    )
    enable_service_links: bool = Field(
        default=True, description="Inject service environment variables like the kubelet (pod.spec.enableServiceLinks)."
    )


class VkSettings(Section):
    """Everything vk_bridge needs."""

    node: NodeSettings = Field(default_factory=NodeSettings)
    kube: KubeSettings = Field(default_factory=KubeSettings)
    interlink: InterLinkSettings = Field(default_factory=InterLinkSettings)
    kubelet_api: KubeletApiSettings = Field(default_factory=KubeletApiSettings)
    pods: PodSettings = Field(default_factory=PodSettings)
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0, description="How long tasks get to stop on SIGTERM.")
