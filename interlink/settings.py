"""interlink's settings: defaults < TOML file < `KOD_INTERLINK_*` environment < flags.

A minimal config file (`~/.config/kod/interlink.toml`):

    token_file = "~/.config/kod/interlink.token"

    [listen]
    host = "127.0.0.1"
    port = 3000
    # socket = "/run/kod/interlink.sock"    # listen on this unix socket instead of TCP

    [[sidecars]]
    name = "docker"
    url = "http://127.0.0.1:4000"          # or unix:///run/kod/docker-sidecar.sock
    token_file = "~/.config/kod/docker-sidecar.token"
    # [sidecars.match]                     # no match rule: this sidecar takes every pod
    # runtime_class = "kod-docker"
    # labels = { "kod.io/runtime" = "docker" }

Environment names are the prefix plus the field in upper case, `__` between nested levels:
`KOD_INTERLINK_LISTEN__PORT=3001`, `KOD_INTERLINK_SIDECARS='[{"name": "docker", "url": ...}]'`
(lists as JSON). `docs/interlink.md` lists them all.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from kod import names, service, wire
from kod.settings import config_home

ENV_PREFIX = "KOD_INTERLINK_"
DEFAULT_PORT = 3000
#: The Docker sidecar's default address (the port interLink has always used for it).
DEFAULT_SIDECAR_URL = "http://127.0.0.1:4000"


def default_config_file() -> Path:
    """Where `kod-interlink` looks for its TOML file when `--config` is not given."""
    return config_home() / "kod" / "interlink.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListenSettings(service.ListenSettings):
    """Where interlink serves the virtual kubelet."""

    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="TCP port; 0 picks a free one.")


class MatchRule(_Section):
    """Which pods a sidecar takes. Every criterion given must hold; a rule with none takes every
    pod. Sidecars are tried in the order they are listed: put the catch-all last."""

    runtime_class: str | None = Field(default=None, description="The pod's spec.runtimeClassName.")
    labels: dict[str, str] = Field(default_factory=dict, description="Pod labels that must all be equal.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Pod annotations that must all be equal."
    )

    @property
    def catch_all(self) -> bool:
        return self.runtime_class is None and not self.labels and not self.annotations


class SidecarSettings(_Section):
    """One plugin interlink routes pods to."""

    name: str = Field(description="Short name (DNS label); reported in PodStatus.sidecar and ping.")
    url: str = Field(description="http://host:port, https://host:port or unix:///path/to.sock")
    token_file: Path | None = Field(default=None, description="File holding the sidecar's bearer token.")
    token: SecretStr | None = Field(default=None, description="The token itself (prefer token_file).")
    match: MatchRule = Field(default_factory=MatchRule)
    timeout_seconds: float = Field(default=30.0, gt=0, description="Per request (not for streams).")

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not names.is_dns_label(value):
            raise ValueError(f"sidecar name {value!r} must be a DNS label (a-z, 0-9, '-')")
        return value

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "unix:///")):
            raise ValueError(f"sidecar url {value!r} must start with http://, https:// or unix:///")
        return value.rstrip("/")

    @field_validator("token_file")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


def _default_sidecars() -> list[SidecarSettings]:
    return [
        SidecarSettings(
            name="docker",
            url=DEFAULT_SIDECAR_URL,
            token_file=config_home() / "kod" / "docker-sidecar.token",
        )
    ]


class WatchSettings(_Section):
    """The status push: interlink's watch streams to the sidecars and from itself."""

    heartbeat_seconds: float = Field(
        default=wire.WATCH_HEARTBEAT_SECONDS,
        gt=0,
        description="HEARTBEAT interval of interlink's own /v1/watch.",
    )
    sidecar_idle_seconds: float = Field(
        default=3 * wire.WATCH_HEARTBEAT_SECONDS,
        gt=0,
        description="A sidecar's status stream that stays silent this long (three of its "
        "heartbeats) is treated as dead and reopened.",
    )
    client_queue: int = Field(
        default=1024,
        ge=1,
        description="Events buffered per watch client; a client that falls this far behind is "
        "disconnected (it reconnects and gets a fresh SYNC) so that it never slows the others.",
    )
    backoff_seconds: tuple[float, ...] = Field(
        default=(0.2, 0.5, 1.0, 2.0, 5.0),
        min_length=1,
        description="Delays between reconnects to a sidecar; the last one repeats forever.",
    )
    initial_sync_seconds: float = Field(
        default=10.0,
        ge=0,
        description="After a start, how long list and watch wait for every sidecar's first SYNC "
        "before answering with what is known (so a restart never shows an empty node).",
    )


class InterlinkSettings(_Section):
    """Everything `kod-interlink` needs; loaded once in `main`."""

    listen: ListenSettings = Field(default_factory=ListenSettings)
    token_file: Path = Field(
        default_factory=lambda: config_home() / "kod" / "interlink.token",
        description="File holding the bearer token clients must send (mode 0600).",
    )
    token: SecretStr | None = Field(
        default=None, description="The token itself, instead of the file (e.g. from a secret store)."
    )
    create_token: bool = Field(
        default=True,
        description="Generate a random token into token_file (0600) when the file does not exist.",
    )
    sidecars: list[SidecarSettings] = Field(default_factory=_default_sidecars, min_length=1)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    ping_timeout_seconds: float = Field(default=5.0, gt=0, description="Per sidecar, for /v1/ping.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    shutdown_timeout_seconds: float = Field(
        default=5.0, ge=0, description="On SIGTERM, how long open requests may take to finish."
    )

    @field_validator("token_file")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _unique_names(self) -> InterlinkSettings:
        names = [s.name for s in self.sidecars]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sidecar names must be unique; repeated: {', '.join(dupes)}")
        return self
