"""The Docker sidecar's settings: defaults < TOML file < `KOD_SIDECAR_*` environment < flags.

A minimal config file (`~/.config/kod/docker-sidecar.toml`):

    token_file = "~/.config/kod/docker-sidecar.token"
    docker_url = "unix:///var/run/docker.sock"
    infra_image = "kod/pause:3.10"

    [listen]
    host = "127.0.0.1"
    port = 4000
    # socket = "/run/kod/docker-sidecar.sock"   # listen on this unix socket instead of TCP

    [policy]
    allowed_host_paths = ["/tmp/.X11-unix", "/run/kod/pulse"]
    allowed_devices = ["/dev/dri", "/dev/nvidia*"]

Environment names are the prefix plus the field in upper case, `__` between nested levels:
`KOD_SIDECAR_LISTEN__PORT=4001`, `KOD_SIDECAR_POLICY__ALLOWED_HOST_PATHS='["/tmp/.X11-unix"]'`
(lists as JSON). `docs/docker-sidecar.md` lists them all.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from kod import wire
from kod.settings import config_home

ENV_PREFIX = "KOD_SIDECAR_"
#: The port interLink has always used for its Docker sidecar (interlink's default sidecar URL).
DEFAULT_PORT = 4000
DEFAULT_INFRA_IMAGE = "kod/pause:3.10"
#: Docker's default capability set (moby's oci/caps/defaults.go), which Kubernetes runtimes use too.
#: Adding one of these is a no-op and always allowed.
DOCKER_DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)


def default_config_file() -> Path:
    """Where `kod-docker-sidecar` looks for its TOML file when `--config` is not given."""
    return config_home() / "kod" / "docker-sidecar.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListenSettings(_Section):
    """Where the sidecar serves interlink (or, for tests and small setups, the virtual kubelet)."""

    host: str = Field(default="127.0.0.1", description="TCP address; keep it on loopback.")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    socket: str = Field(
        default="", description="Path of a unix socket to listen on INSTEAD of TCP (created with mode 0600)."
    )


class PolicySettings(_Section):
    """The desktop policy: what a pod may ask of this machine. Everything not listed is refused
    (HTTP 403 from create, nothing created). Each allowance weakens isolation; see the docs."""

    allowed_host_paths: list[str] = Field(
        default_factory=lambda: ["/tmp/.X11-unix", "/run/kod/pulse"],
        description="Host directories (and everything below them) that hostPath volumes may mount. "
        "Default: the X11 socket directory and the kod PulseAudio socket directory.",
    )
    read_only_host_paths: list[str] = Field(
        default_factory=list,
        description="Host directories that hostPath volumes may mount read-only only.",
    )
    allowed_devices: list[str] = Field(
        default_factory=lambda: ["/dev/dri", "/dev/nvidia*"],
        description="Device paths (shell patterns; a directory means every device below it) that "
        "hostPath volumes may map into a container as devices (GPU rendering, CUDA).",
    )
    allowed_capabilities: list[str] = Field(
        default_factory=list,
        description="Capabilities that securityContext.capabilities.add may add beyond Docker's "
        "default set (e.g. SYS_PTRACE). Names without the CAP_ prefix.",
    )
    allow_gpus: bool = Field(
        default=True,
        description="Honour nvidia.com/gpu limits with Docker device requests (needs the NVIDIA "
        "container runtime on the host).",
    )
    allow_privilege_escalation: bool = Field(
        default=False,
        description="Accept allowPrivilegeEscalation: true (setuid binaries such as sudo). Off: every "
        "container runs with no-new-privileges.",
    )

    @field_validator("allowed_capabilities")
    @classmethod
    def _caps(cls, value: list[str]) -> list[str]:
        return [normalize_capability(c) for c in value]

    @field_validator("allowed_host_paths", "read_only_host_paths")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        out = []
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"host path {path!r} must be absolute")
            out.append(path.rstrip("/") or "/")
        return out


def normalize_capability(name: str) -> str:
    """'cap_net_admin' -> 'NET_ADMIN'."""
    upper = name.strip().upper()
    return upper[4:] if upper.startswith("CAP_") else upper


class CapacitySettings(_Section):
    """What the node offers to the scheduler. Unset values come from the Docker engine."""

    cpu: str | None = Field(default=None, description='CPUs, e.g. "4"; default: the engine\'s CPU count.')
    memory: str | None = Field(default=None, description='Memory, e.g. "8Gi"; default: the engine\'s total memory.')
    pods: int = Field(default=110, ge=1, description="Maximum number of pods.")
    extra: dict[str, str] = Field(
        default_factory=dict, description='Extended resources, e.g. {"nvidia.com/gpu": "1"}.'
    )


class RestartSettings(_Section):
    """Back-off between restarts of a failing container (Kubernetes' CrashLoopBackOff)."""

    initial_seconds: float = Field(default=10.0, ge=0, description="Delay before the second restart.")
    max_seconds: float = Field(default=300.0, ge=0, description="The delay doubles up to this.")
    reset_after_seconds: float = Field(
        default=600.0, ge=0, description="A container that ran this long restarts without delay again."
    )


_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class DockerSidecarSettings(_Section):
    """Everything `kod-docker-sidecar` needs; loaded once in `main`."""

    name: str = Field(
        default="docker",
        description="Sidecar name (DNS label). Reported in ping; also labels every Docker object, so "
        "two sidecars on one engine never touch each other's pods.",
    )
    listen: ListenSettings = Field(default_factory=ListenSettings)
    token_file: Path = Field(
        default_factory=lambda: config_home() / "kod" / "docker-sidecar.token",
        description="File holding the bearer token clients must send (mode 0600).",
    )
    token: SecretStr | None = Field(default=None, description="The token itself, instead of the file.")
    create_token: bool = Field(
        default=True, description="Generate a random token into token_file (0600) when the file does not exist."
    )
    docker_url: str = Field(
        default="unix:///var/run/docker.sock",
        description="The Docker engine: unix:///path/to/docker.sock or http://host:port.",
    )
    docker_timeout_seconds: float = Field(default=60.0, gt=0, description="Timeout of one engine call (not streams).")
    infra_image: str = Field(
        default=DEFAULT_INFRA_IMAGE,
        description="Image of each pod's infra container, which holds the pod's network and IPC "
        "namespaces (a static pause binary; built by `python -m localenv images`).",
    )
    network: str = Field(default="bridge", description="Docker network the pods' infra containers join.")
    shm_size: str = Field(default="64Mi", description="Size of each pod's /dev/shm.")
    memory_volume_size: str | None = Field(
        default=None,
        description="Size limit of each pod's tmpfs (Secret, ConfigMap, projected, downwardAPI and "
        "medium: Memory emptyDir contents); default: the kernel's (half the RAM). Pages count "
        "against the memory limit of the container that writes them.",
    )
    log_max_size: str = Field(default="10m", description="json-file log rotation size per container.")
    log_max_files: int = Field(default=3, ge=1, description="json-file log files kept per container.")
    default_grace_period_seconds: int = Field(
        default=30, ge=0, description="Grace period of a delete that gives none and whose pod sets none."
    )
    restart: RestartSettings = Field(default_factory=RestartSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    node_labels: dict[str, str] = Field(default_factory=dict, description="Labels reported in ping.")
    taints: list[wire.Taint] = Field(
        default_factory=list, description="Taints reported in ping (the virtual kubelet adds its own)."
    )
    watch_queue: int = Field(
        default=1024,
        ge=1,
        description="Events buffered per watch client; a client that falls this far behind is "
        "disconnected (it reconnects and gets a fresh SYNC).",
    )
    heartbeat_seconds: float = Field(
        default=wire.WATCH_HEARTBEAT_SECONDS, gt=0, description="HEARTBEAT interval of /v1/watch."
    )
    ready_timeout_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long a pod request waits for the first sync with the engine before "
        "answering 503.",
    )
    events_backoff_seconds: tuple[float, ...] = Field(
        default=(0.2, 0.5, 1.0, 2.0, 5.0),
        min_length=1,
        description="Delays between reconnects to the engine's event stream; the last one repeats.",
    )
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    shutdown_timeout_seconds: float = Field(
        default=5.0, ge=0, description="On SIGTERM, how long open requests may take to finish."
    )

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"sidecar name {value!r} must be a DNS label (a-z, 0-9, '-')")
        return value

    @field_validator("token_file")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("docker_url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("unix:///", "http://", "tcp://")):
            raise ValueError(f"docker_url {value!r} must start with unix:///, http:// or tcp://")
        return value
