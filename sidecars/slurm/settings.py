"""The Slurm sidecar's settings: defaults < TOML file < `KOD_SLURM_*` environment < flags.

    token_file = "~/.config/kod/slurm-sidecar.token"
    work_dir = "/var/lib/kod-slurm"       # job directories, image trees, pod records
    partition = "kod"

    [listen]
    host = "127.0.0.1"
    port = 4001
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from kod import names, service, wire
from kod.settings import config_home

ENV_PREFIX = "KOD_SLURM_"
#: The port interLink has always used for its Slurm sidecar.
DEFAULT_PORT = 4001


def default_config_file() -> Path:
    return config_home() / "kod" / "slurm-sidecar.toml"


class ListenSettings(service.ListenSettings):
    """Where the sidecar serves interlink."""

    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="TCP port; 0 picks a free one.")


class SlurmSidecarSettings(BaseModel):
    """Everything the Slurm sidecar reads."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        default="slurm", description="The sidecar's name: part of every job's comment (kod:<name>:<pod uid>), "
        "so two sidecars on one Slurm never adopt or cancel each other's jobs.",
    )
    listen: ListenSettings = Field(default_factory=ListenSettings)
    token_file: Path = Field(default_factory=lambda: config_home() / "kod" / "slurm-sidecar.token",
                             description="Bearer token file (0600).")
    token: SecretStr | None = Field(default=None, description="The token itself, instead of the file.")
    create_token: bool = Field(default=True, description="Create the token file (random, 0600) when missing.")
    work_dir: Path = Field(
        default=Path("/var/lib/kod-slurm"),
        description="Job directories (jobs/<pod uid>), image trees (images/) and pod records (records/). On a "
        "real site: a file system the login node and the compute nodes share.",
    )
    partition: str = Field(default="kod", description="The Slurm partition pods' jobs go to.")
    account: str | None = Field(default=None, description="sbatch --account, when the site needs one.")
    docker_url: str = Field(default="unix:///var/run/docker.sock",
                            description="The Docker engine image trees are exported from (`docker export`).")
    poll_seconds: float = Field(default=1.0, gt=0, description="Seconds between the one squeue call that "
                                "updates every pod's status.")
    default_memory: str = Field(default="256Mi", description="--mem of a container without a memory request or "
                                "limit (Slurm needs one; a kubelet would let it use the node's).")
    default_uid: int = Field(default=65534, ge=1, description="The job's uid when the pod sets no runAsUser "
                             "(nobody; never root: a job's user is a user of the HPC host).")
    default_gid: int | None = Field(default=None, ge=1, description="The job's gid when the pod sets no runAsGroup "
                                    "(default: the uid's).")
    min_uid: int = Field(default=1000, ge=1, description="The lowest runAsUser/runAsGroup a pod may ask for.")
    max_uid: int = Field(default=59999, ge=1, description="The highest runAsUser/runAsGroup a pod may ask for. "
                         "Outside [min_uid, max_uid] (root and the site's system accounts: munge, slurm (Debian: "
                         "64030), daemons) a pod is refused (403: the pod Failed, reason Forbidden).")
    default_grace_period_seconds: int = Field(default=30, ge=0)
    capacity_pods: int = Field(default=250, ge=1, description="Pods the node accepts.")
    node_labels: dict[str, str] = Field(default_factory=lambda: {"kod.io/sidecar": "slurm"},
                                        description="Labels reported in ping.")
    taints: list[wire.Taint] = Field(default_factory=list, description="Taints reported in ping.")
    watch_queue: int = Field(default=4096, ge=16, description="Events queued per watch client before it is cut.")
    heartbeat_seconds: float = Field(default=wire.WATCH_HEARTBEAT_SECONDS, gt=0)
    command_timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of one Slurm command.")
    log_level: str = Field(default="info")
    shutdown_timeout_seconds: float = Field(default=5.0, gt=0)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not names.is_dns_label(value):
            raise ValueError(f"name {value!r} must be a DNS label")
        return value


