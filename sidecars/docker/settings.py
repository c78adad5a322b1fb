"""The Docker sidecar's settings: defaults < TOML file < `KOD_SIDECAR_*` environment < flags.

A minimal config file (`~/.config/kod/docker-sidecar.toml`):

    token_file = "~/.config/kod/docker-sidecar.token"
    docker_url = "unix:///var/run/docker.sock"
    infra_image = "kod/pause:3.10"

    [listen]
    host = "127.0.0.1"
    port = 4000
    # socket = "/run/kod/docker-sidecar.sock"   # listen on this unix socket instead of TCP

    [network]                     # the pods' own Docker network (defaults shown)
    host_rules = "auto"
    host_allow = ["tcp/39400-39499"]

    [[policy.host_paths]]          # exact paths pods may mount (read-only unless writable = true)
    path = "/tmp/.X11-unix"
    type = "directory"             # directory, socket, file or devices

Environment names are the prefix plus the field in upper case, `__` between nested levels:
`KOD_SIDECAR_LISTEN__PORT=4001`, `KOD_SIDECAR_POLICY__HOST_PATHS='[{"path": "/tmp/.X11-unix"}]'`
(lists as JSON). `docs/docker-sidecar.md` lists them all.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from kod import names, quantity, service, wire
from kod.settings import config_home

ENV_PREFIX = "KOD_SIDECAR_"
#: The port interLink has always used for its Docker sidecar (interlink's default sidecar URL).
DEFAULT_PORT = 4000
DEFAULT_INFRA_IMAGE = "kod/pause:3.10"
#: Docker's default capability set (moby's oci/caps/defaults.go), which Kubernetes runtimes use too.
DOCKER_DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)
#: What containers on the desktop keep of it: the runtime default minus NET_RAW (raw packets:
#: ARP and DNS spoofing on the pods' network), MKNOD (device nodes in volumes), AUDIT_WRITE,
#: SETFCAP (file capabilities), SYS_CHROOT and SETPCAP, which no pod of the test suite needs
#: (docs/security.md). Adding one of these is a no-op and always allowed.
KEPT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "NET_BIND_SERVICE", "KILL")


def default_config_file() -> Path:
    """Where `kod-docker-sidecar` looks for its TOML file when `--config` is not given."""
    return config_home() / "kod" / "docker-sidecar.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListenSettings(service.ListenSettings):
    """Where the sidecar serves interlink (or, for tests and small setups, the virtual kubelet)."""

    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="TCP port; 0 picks a free one.")


#: What a host path of the allow-list is; the final object must be of that type.
HostPathKind = Literal["directory", "socket", "file", "devices"]


class HostPathEntry(_Section):
    """One host path pods may mount: exactly this path (a shell pattern may stand for one
    component at a time, e.g. `/run/kod/pulse/*`; nothing below a match is allowed)."""

    path: str = Field(description="Absolute, plainly written path ('*', '?', '[...]' match within one component).")
    type: HostPathKind = Field(
        default="directory",
        description="directory, socket, file (bind-mounted) or devices (a character device, or a directory "
        "of them such as /dev/dri, mapped as devices).",
    )
    writable: bool = Field(
        default=False,
        description="Pods may mount it read-write (a loosening: a pod can then plant files there for other "
        "pods and local users). Default: read-only only.",
    )
    owners: list[int] = Field(
        default_factory=list,
        description="uids, besides root and the sidecar's own, that may own the path and the directories "
        "above it (e.g. the desktop user for a socket in their home).",
    )

    @field_validator("path")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not value.startswith("/") or (value != "/" and any(p in ("", ".", "..") for p in value[1:].split("/"))):
            raise ValueError(f"host path {value!r} must be absolute and plainly written (no '.', '..', '//', trailing '/')")
        return value


def _default_host_paths() -> list[HostPathEntry]:
    return [
        HostPathEntry(path="/tmp/.X11-unix"),
        HostPathEntry(path="/run/kod/pulse"),
        # One directory per sound socket (tests and the demo make one each); nothing deeper.
        HostPathEntry(path="/run/kod/pulse/*"),
        HostPathEntry(path="/dev/dri", type="devices"),
    ]


class PolicySettings(_Section):
    """The desktop policy: what a pod may ask of this machine. Everything not listed is refused
    (HTTP 403 from create, nothing created). Each allowance weakens isolation; each `allow_*` and
    each writable host path is a loosening, logged as a warning at start (see docs/security.md)."""

    host_paths: list[HostPathEntry] = Field(
        default_factory=_default_host_paths,
        description="The host paths hostPath volumes may name, exactly (read-only unless `writable`). "
        "Default: the X11 socket directory, the kod sound socket directories and /dev/dri.",
    )
    allowed_capabilities: list[str] = Field(
        default_factory=list,
        description="Capabilities that securityContext.capabilities.add may add beyond the desktop's kept "
        f"set ({', '.join(KEPT_CAPABILITIES)}), e.g. NET_RAW or SYS_PTRACE. Names without the CAP_ prefix. "
        "A loosening.",
    )
    allow_gpus: bool = Field(
        default=True,
        description="Honour nvidia.com/gpu limits with Docker device requests (needs the NVIDIA "
        "container runtime on the host).",
    )
    allow_privilege_escalation: bool = Field(
        default=False,
        description="Accept allowPrivilegeEscalation: true (setuid binaries such as sudo). Off: every "
        "container runs with no-new-privileges. A loosening.",
    )
    allow_root_with_host_paths: bool = Field(
        default=False,
        description="Let containers of pods that mount host paths run as uid 0. Off: such pods must run "
        "as a non-root uid. A loosening.",
    )
    allow_unconfined_seccomp: bool = Field(
        default=False, description="Accept seccompProfile type Unconfined (no system call filter). A loosening."
    )
    allow_unconfined_apparmor: bool = Field(
        default=False, description="Accept appArmorProfile type Unconfined. A loosening."
    )
    allow_unmasked_proc_mount: bool = Field(
        default=False, description="Accept procMount: Unmasked (the host's /proc paths Docker masks). A loosening."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [k for k in ("allowed_host_paths", "read_only_host_paths", "allowed_devices") if k in data]
            if old:
                raise ValueError(
                    f"{', '.join(old)} no longer exist: host paths are exact now, each with its type, in "
                    'policy.host_paths (e.g. [{path = "/tmp/.X11-unix", type = "directory"}, '
                    '{path = "/dev/dri", type = "devices"}]); see docs/docker-sidecar.md'
                )
        return data

    @field_validator("allowed_capabilities")
    @classmethod
    def _caps(cls, value: list[str]) -> list[str]:
        return [normalize_capability(c) for c in value]


class HostAccessSettings(_Section):
    """How host paths and subPaths of writable volumes are given to containers (docs/security.md)."""

    mode: Literal["auto", "staged", "off"] = Field(
        default="auto",
        description="staged: each host path and writable subPath is opened without following symlinks "
        "and bind-mounted onto a root-only staging path, which Docker mounts (needs root and "
        "CAP_SYS_ADMIN in the engine's mount namespace). off: pods with host paths or subPaths of "
        "writable volumes are refused. auto: staged when the sidecar can mount, else off.",
    )
    staging_dir: Path | None = Field(
        default=None, description="Root-only directory of the staging mounts; default /run/kod/docker-sidecar/<name>."
    )


class LimitsSettings(_Section):
    """Ceilings of desktop pods, per container (Kubernetes limits are per container)."""

    default_memory: str = Field(default="1Gi", description="Memory limit of a container that sets none.")
    max_memory: str | None = Field(
        default=None, description="Largest memory limit (or request) a container may ask for; default: the node's memory."
    )
    default_cpu: str = Field(default="1", description="CPU limit of a container that sets none.")
    max_cpu: str | None = Field(
        default=None, description="Largest CPU limit (or request) a container may ask for; default: the node's CPUs."
    )
    pids: int = Field(
        default=1024, ge=16, description="Process (and thread) limit of every container (pods cannot ask for one)."
    )

    @field_validator("default_memory", "max_memory", "default_cpu", "max_cpu")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and quantity.parse(value) <= 0:
            raise ValueError(f"{value!r} must be a positive quantity")
        return value


def normalize_capability(name: str) -> str:
    """'cap_net_admin' -> 'NET_ADMIN'."""
    upper = name.strip().upper()
    return upper[4:] if upper.startswith("CAP_") else upper


#: cloudify's port-forward listeners for viewers in containers (cloudify's `forward_ports`).
CLOUDIFY_FORWARD_PORTS = "39400-39499"


class HostAllow(BaseModel):
    """One service of the desktop that pods may reach: "tcp/6443", "tcp/39400-39499",
    "tcp/192.0.2.2:6443" (one address only), "udp/53"."""

    model_config = ConfigDict(frozen=True)

    protocol: Literal["tcp", "udp"]
    address: str | None = None
    ports: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        m = re.fullmatch(r"(tcp|udp)/(?:([0-9.]+):)?(\d{1,5}(?:-\d{1,5})?)", value.strip())
        if not m:
            raise ValueError(f"{value!r}: write PROTOCOL/[ADDRESS:]PORT[-PORT], e.g. tcp/6443 or tcp/192.0.2.2:6443")
        if m.group(2):
            ipaddress.IPv4Address(m.group(2))
        return {"protocol": m.group(1), "address": m.group(2), "ports": m.group(3)}

    def __str__(self) -> str:
        return f"{self.protocol}/{self.address + ':' if self.address else ''}{self.ports or ''}"


class NetworkSettings(_Section):
    """The pods' own Docker network (sidecars/docker/network.py): not Docker's default bridge, no
    traffic between pods, no access to the desktop's own services but `host_allow`."""

    name: str | None = Field(
        default=None,
        description="Docker network of the pods' infra containers; default kod-<sidecar name>-pods, created, "
        "labelled and owned by the sidecar (re-created when removed). \"bridge\" (Docker's default) gives all "
        "of this up: pods then share it with your own containers.",
    )
    subnet: str | None = Field(default=None, description='Its IPv4 subnet, e.g. "10.213.0.0/24"; default: Docker picks one.')
    bridge: str | None = Field(default=None, description="Its Linux bridge's name (15 characters at most); default kodp-<hash>.")
    isolate_pods: bool = Field(
        default=True,
        description="No traffic between pods: Docker's enable_icc=false, every bridge port isolated (no ARP or "
        "frames from pod to pod) and each pod's address pinned (permanent neighbour entry). Off: pods can "
        "reach, spoof and sniff each other, the viewer included.",
    )
    host_rules: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Reject what pods send to this desktop's own addresses, but host_allow (iptables INPUT chain "
        "for the bridge; needs root in the desktop's network namespace). auto: install when possible, else warn; "
        "on: refuse to start without them; off: pods reach every service of the desktop.",
    )
    host_allow: list[HostAllow] = Field(
        default_factory=lambda: [HostAllow.model_validate(f"tcp/{CLOUDIFY_FORWARD_PORTS}")],
        description="Services of this desktop that pods may reach, as PROTOCOL/[ADDRESS:]PORT[-PORT]: the "
        f"cluster's API server when it runs on this machine (localenv adds it), and cloudify's port-forward "
        f"range (tcp/{CLOUDIFY_FORWARD_PORTS}, where a viewer pod reaches its session when node addresses are not "
        "reachable; each listener accepts only its own viewer's address).",
    )

    @field_validator("bridge")
    @classmethod
    def _ifname(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", value):
            raise ValueError("a bridge name has 1-15 letters, digits, '-', '_' or '.'")
        return value

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.IPv4Network(value)
        return value


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
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    shm_size: str = Field(default="64Mi", description="Size of each pod's /dev/shm.")
    memory_volume_size: str | None = Field(
        default=None,
        description="Upper bound of each pod's tmpfs (Secret, ConfigMap, projected, downwardAPI and "
        "medium: Memory emptyDir contents), which is otherwise sized to its contents plus each "
        "memory emptyDir's sizeLimit (else the largest memory limit of the containers mounting it).",
    )
    log_max_size: str = Field(default="10m", description="json-file log rotation size per container.")
    log_max_files: int = Field(default=3, ge=1, description="json-file log files kept per container.")
    default_grace_period_seconds: int = Field(
        default=30, ge=0, description="Grace period of a delete that gives none and whose pod sets none."
    )
    restart: RestartSettings = Field(default_factory=RestartSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    host_access: HostAccessSettings = Field(default_factory=HostAccessSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
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
        if not names.is_dns_label(value):
            raise ValueError(f"sidecar name {value!r} must be a DNS label (a-z, 0-9, '-')")
        return value

    @field_validator("token_file")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def staging_dir(self) -> Path:
        """Where this sidecar's staging mounts live (one sidecar, one directory)."""
        return self.host_access.staging_dir or Path("/run/kod/docker-sidecar") / self.name

    @field_validator("docker_url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("unix:///", "http://", "tcp://")):
            raise ValueError(f"docker_url {value!r} must start with unix:///, http:// or tcp://")
        return value
