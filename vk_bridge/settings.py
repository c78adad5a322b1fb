"""vk_bridge's settings: one object, loaded once in `main` and passed down.

Loaded with `kod.settings.load_settings(VkSettings, path, env_prefix=ENV_PREFIX)`: defaults, then
the TOML file (`~/.config/kod/vk.toml` by default), then `KOD_VK_*` environment variables
(`KOD_VK_NODE__NAME=my-desktop`, `KOD_VK_INTERLINK__URL=http://127.0.0.1:3000`), then flags.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kod.names import virtual_node_name
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


class NodeSettings(Section):
    """The Node object vk_bridge registers."""

    name: str = Field(default_factory=virtual_node_name, description="Node name; default desktop-<hostname>.")
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
        default=None, description="Kubeconfig whose credentials are used as they are (whatever they may do; "
        "vk_bridge warns when they are not system:node:<node>), for development. Unset: the node's own "
        "identity when `identity` names a bootstrap, else in-cluster config in a pod, else ~/.kube/config."
    )
    context: str | None = Field(default=None, description="Kubeconfig context; default the current one.")
    backoff: tuple[float, ...] = Field(default=DEFAULT_BACKOFF, description="Retry delays in seconds.")
    request_timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of one non-watch request.")
    watch_timeout_seconds: int = Field(
        default=300, ge=10, description="Server-side timeout of one watch request; the client re-watches from the "
        "last resourceVersion (no re-list), so an idle stream costs one request per this many seconds."
    )


class IdentitySettings(Section):
    """Who vk_bridge is to the API server: `system:node:<node>` in group `system:nodes`, like a
    kubelet, with a client certificate from the kubelet's TLS bootstrap (vk_bridge/identity.py).
    Set one of the two bootstrap sources; with neither, `kube.kubeconfig` is used as it is."""

    bootstrap_kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig with the API server, its CA and a bootstrap token (used only "
        "while there is no valid client certificate in cert_dir).",
    )
    bootstrap_token_dir: Path | None = Field(
        default=None, description="In a pod: a directory with `token` (a bootstrap token) and `ca.crt`; the "
        "API server from KUBERNETES_SERVICE_HOST/PORT.",
    )
    cert_dir: Path = Field(
        default=Path("~/.local/share/kod/vk/pki"),
        description="Where the node's client certificate and key are kept (one file, 0600), with a kubeconfig "
        "that uses them.",
    )
    certificate_seconds: int | None = Field(
        default=None, ge=600, description="Lifetime asked for in the CSR (spec.expirationSeconds, at least "
        "600); unset: the signer's default (--cluster-signing-duration, a year by default).",
    )
    rotation_fraction: tuple[float, float] = Field(
        default=(0.7, 0.9), description="A new certificate is requested at a random point in this fraction "
        "of the current one's lifetime (the kubelet's 70-90 %).",
    )
    csr_timeout_seconds: float = Field(
        default=300.0, gt=0, description="How long to wait for a client CSR to be approved and signed.",
    )

    @field_validator("rotation_fraction")
    @classmethod
    def _fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 0 < lo <= hi < 1:
            raise ValueError(f"rotation_fraction {value} must be two fractions 0 < low <= high < 1")
        return value

    @model_validator(mode="after")
    def _one_bootstrap(self) -> IdentitySettings:
        if self.bootstrap_kubeconfig is not None and self.bootstrap_token_dir is not None:
            raise ValueError("set identity.bootstrap_kubeconfig or identity.bootstrap_token_dir, not both")
        return self

    @property
    def bootstraps(self) -> bool:
        """True when vk_bridge is to be the node itself (a bootstrap source is set)."""
        return self.bootstrap_kubeconfig is not None or self.bootstrap_token_dir is not None


class InterLinkSettings(Section):
    """How vk_bridge reaches InterLink."""

    url: str = Field(default="http://127.0.0.1:3000", description="http://host:port or unix:///path/to.sock.")
    token_file: Path | None = Field(
        default_factory=lambda: config_home() / "kod" / "interlink.token",
        description="File holding InterLink's bearer token (mode 0600); interlink's own default file.",
    )
    token_file_group_readable: bool = Field(
        default=False,
        description="Accept a token file its group may read (never others): a Secret volume with the "
        "pod's fsGroup, in the cluster. Off: a file group or others may read is refused.",
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
    # Caches like the kubelet's webhook authenticator/authorizer (its defaults: 2 min for token
    # answers, 5 min allowed and 30 s denied for access reviews); rejected tokens shorter.
    token_cache_seconds: float = Field(default=120.0, ge=0, description="How long an accepted token (TokenReview) is cached.")
    token_failure_cache_seconds: float = Field(default=10.0, ge=0, description="How long a rejected token is cached.")
    authz_allowed_cache_seconds: float = Field(default=300.0, ge=0, description="How long an allowed SubjectAccessReview is cached.")
    authz_denied_cache_seconds: float = Field(default=30.0, ge=0, description="How long a denied SubjectAccessReview is cached.")
    token_reviews_per_second: float = Field(
        default=5.0, gt=0, description="TokenReviews sent for tokens not in the cache, at most (a token bucket; "
        "beyond it callers get 429): a flood of bad tokens never becomes a flood of TokenReviews.",
    )
    token_review_burst: int = Field(default=20, ge=1, description="Size of that bucket.")


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


class VolumeSettings(Section):
    """Live Secret, ConfigMap, downwardAPI and projected volumes (vk_bridge/live_volumes.py), and
    the projected service-account tokens' refresh (vk_bridge/token_manager.py)."""

    resync_seconds: float = Field(
        default=10.0, gt=0, description="How often every running pod's content volumes are resolved again "
        "(from the watched ConfigMaps and Secrets, so in memory) and changes sent; a watched object's "
        "change is sent at once.",
    )
    token_refresh_fraction: float = Field(
        default=0.8, gt=0, lt=1, description="A projected token is requested again once this fraction of its "
        "lifetime has passed (the kubelet's 80 %); lower it only to test the refresh.",
    )
    token_max_age_seconds: float = Field(
        default=24 * 3600.0, gt=0, description="A projected token is requested again at this age at the latest "
        "(the kubelet's 24 h).",
    )


class AdmissionSettings(Section):
    """Which pods bound to the node may run on the desktop (vk_bridge/admission.py). Everything
    not allowed here ends Failed (reason NotAllowedByOwner) without touching Docker."""

    owner_namespace: str | None = Field(
        default=None,
        description="The owner's namespace, whose pods run here; default kod-<node.user> (kod.names.user_namespace).",
    )
    allow: list[str] = Field(
        default_factory=list,
        description='Other identities whose pods run here too: "namespace" (any service account of it) or '
        '"namespace/serviceaccount". Whoever may create pods there (or run as that account) gets the desktop '
        "as far as the Docker sidecar's policy lets any pod have it.",
    )

    @field_validator("owner_namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value):
            raise ValueError(f"{value!r} is not a namespace name (a DNS-1123 label)")
        return value

    @field_validator("allow")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        label = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
        subdomain = rf"{label}(\.{label})*"
        for entry in value:
            if not re.fullmatch(rf"{label}(/{subdomain})?", entry) or len(entry.split("/")[0]) > 63:
                raise ValueError(f"{entry!r} is neither a namespace nor namespace/serviceaccount")
        return value


class VkSettings(Section):
    """Everything vk_bridge needs."""

    node: NodeSettings = Field(default_factory=NodeSettings)
    kube: KubeSettings = Field(default_factory=KubeSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    interlink: InterLinkSettings = Field(default_factory=InterLinkSettings)
    kubelet_api: KubeletApiSettings = Field(default_factory=KubeletApiSettings)
    pods: PodSettings = Field(default_factory=PodSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    volumes: VolumeSettings = Field(default_factory=VolumeSettings)
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0, description="How long tasks get to stop on SIGTERM.")

    @model_validator(mode="after")
    def _one_credential(self) -> VkSettings:
        if self.identity.bootstraps and self.kube.kubeconfig is not None:
            raise ValueError("set kube.kubeconfig (credentials used as they are) or an identity bootstrap "
                             "(the node's own certificate), not both")
        return self
