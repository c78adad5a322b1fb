"""cloudify's settings: defaults for every flag, and what the flags do not cover.

Loaded once in `main` with `kod.settings.load_settings`: defaults < `~/.config/kod/cloudify.toml`
< `KOD_CLOUDIFY_*` environment variables < command-line flags. Facts about the desktop that the
environment carries anyway ($DISPLAY, $XAUTHORITY, $KUBECONFIG, $XDG_RUNTIME_DIR) are read in
`main` too (`HostEnv`) and passed down; nothing below `main` reads `os.environ`.

Example `~/.config/kod/cloudify.toml`:

    quality = 7
    secure = true                # the default (false: --insecure, warned about)
    namespace = "kod-alice"      # the default: kod-<user>, your own namespace
    user_node = "my-laptop"      # this desktop is also a cluster node: never run apps there

Whose cluster credentials: your own. The kubeconfig is the setting, else $KUBECONFIG, else
~/.kube/config, else the one the local environment wrote for you
(~/.local/share/kod/cluster/users/<user>.kubeconfig); never the local cluster's admin
kubeconfig. Your sessions live in your own namespace, kod-<user>, in which the cluster's admin
gave you cloudify's role (kustomizations/users); nobody else's role reaches into it.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from kod import apps, errors, names
from kod.settings import config_home, load_settings

ENV_PREFIX = "KOD_CLOUDIFY_"
#: The original's threshold: a cluster slower than this to answer is "slow" (thesis, 4.5).
SLOW_CLUSTER_SECONDS = 2.0
#: A round trip over this makes typing and scrolling in a remote window feel late (a home link
#: has 20-60 ms; a transatlantic one ~100-150 ms).
MAX_RTT_MS = 150.0
#: Under this the picture of a moving window drops frames even at low quality (cloudify.link).
MIN_MBPS = 2.0
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_QUALITY = 5
DEFAULT_COMPRESSION = 2
#: Where the local environment (`python -m localenv up --demo`) writes a user's own kubeconfig
#: (localenv/users.py): never the admin's.
LOCALENV_USER_KUBECONFIG = "~/.local/share/kod/cluster/users/{user}.kubeconfig"

RunMode = Literal["pod", "docker", "native"]
Protocol = Literal["vnc", "novnc"]
Reach = Literal["auto", "nodeport", "port-forward"]


class CloudifySettings(BaseModel):
    """Every default cloudify uses. Field names are the TOML keys; the environment variable is
    `KOD_CLOUDIFY_<NAME>` (e.g. `KOD_CLOUDIFY_QUALITY=7`)."""

    # --- The session's options (each has a command-line flag that overrides it) ---
    run_mode: RunMode = Field(default="pod", description="Where the viewer runs: pod (a pod on your virtual node), docker, native.")
    protocol: Protocol = Field(default="vnc", description="vnc (a VNC viewer) or novnc (your browser).")
    secure: bool = Field(default=True, description="Carry VNC/noVNC inside SSH (the default: nothing of a session crosses the network unencrypted). false is --insecure: VNC without SSH, through the API server's port-forward, protected only by its one-time password; warned about.")
    timeout: float = Field(default=DEFAULT_TIMEOUT_SECONDS, gt=0, description="Seconds to wait for each start-up phase.")
    quality: int = Field(default=DEFAULT_QUALITY, ge=0, le=9, description="JPEG quality of the picture, 0-9.")
    compression: int = Field(default=DEFAULT_COMPRESSION, ge=0, le=9, description="zlib compression level, 0-9.")
    frame_rate: int = Field(default=apps.MAX_FRAME_RATE, ge=apps.MIN_FRAME_RATE, le=apps.MAX_FRAME_RATE,
                            description="The most screen updates per second the app sends, 1-60 (a ceiling: a still picture sends none); fitted to the measured link unless set.")
    persist: bool = Field(default=False, description="Keep the app's settings and documents in a volume per user and app.")

    # --- The cluster ---
    kubeconfig: str | None = Field(default=None, description="Kubeconfig file (your own credentials); default $KUBECONFIG, ~/.kube/config, then the one the local cluster made for you (~/.local/share/kod/cluster/users/<user>.kubeconfig).")
    context: str | None = Field(default=None, description="Kubeconfig context; default the current one.")
    namespace: str | None = Field(default=None, description="Namespace of the sessions; default your own, kod-<user> (the cluster's admin makes it, with your rights in it).")
    user: str | None = Field(default=None, description="Your user name in the cluster (labels, volume names, your virtual node); default your login name.")
    user_node: str | None = Field(default=None, description="Name of the cluster node that is this desktop, if any: apps never run there.")
    virtual_node: str | None = Field(default=None, description="Your virtual node for -r pod, when you have several; default the one named desktop-<this host's name>, else a ready one.")
    reach: Reach = Field(default="auto", description="How the viewer reaches the app: a NodePort, the API server's port-forward, or auto (NodePort when a node address answers).")
    slow_threshold: float = Field(default=SLOW_CLUSTER_SECONDS, gt=0, description="A cluster that takes longer to answer is too slow: run the app locally when it is installed.")
    max_rtt_ms: float = Field(default=MAX_RTT_MS, gt=0, description="A link whose round trip to the API server (measured before each session) is longer runs the app locally when it is installed.")
    min_mbps: float = Field(default=MIN_MBPS, ge=0, description="A link slower than this (Mbit/s from the cluster, measured when the round trip is not a LAN's) runs the app locally when it is installed.")
    fallback: bool = Field(default=True, description="Run the app locally when the cluster is unreachable or slow and the app is installed.")
    image_repo: str = Field(default=apps.IMAGE_REPO, description="Repository of the app and viewer images.")
    image_tag: str = Field(default=apps.IMAGE_TAG, description="Tag of the app and viewer images.")
    image_pull_policy: Literal["Never", "IfNotPresent", "Always"] = "IfNotPresent"
    check_images: bool = Field(default=True, description="Refuse to start when no node that may run the app has its image (turn off when nodes pull from a registry).")
    persist_size: str = Field(default="1Gi", description="Size of a new persistent volume.")
    storage_class: str | None = Field(default=None, description="StorageClass of new persistent volumes; default the cluster's default class.")
    max_session_seconds: int = Field(default=12 * 3600, ge=60, description="The cluster ends a session after this long, even when nobody is there to clean up.")
    geometry: str = Field(default="1280x800", description="Size of the app's virtual screen.")
    depth: Literal[16, 24, 32] = 24

    # --- The desktop ---
    display: str | None = Field(default=None, description="X display of the viewer; default $DISPLAY.")
    xauthority: str | None = Field(default=None, description="X authority file; default $XAUTHORITY or ~/.Xauthority.")
    pulse_socket: str | None = Field(default=None, description="PulseAudio socket the app's sound goes to; default <kod_pulse_dir>/native, set up in your PulseAudio when missing.")
    kod_pulse_dir: str = Field(default="/run/kod/pulse", description="Directory of the kod sound socket; the Docker sidecar must allow it as a host path (it does by default).")
    desktop_gid: int = Field(default=4713, ge=1, description="Group that may reach the kod sound socket; viewers join it.")
    docker_url: str | None = Field(default=None, description="Docker engine for -r docker; default the local one (DOCKER_HOST or /var/run/docker.sock).")
    vncviewer: str = Field(default="vncviewer", description="VNC viewer for -r native.")
    ssh: str = Field(default="ssh", description="ssh client for -r native.")
    browser: str | None = Field(default=None, description="Command that opens the noVNC URL; default xdg-open when installed.")
    state_dir: str | None = Field(default=None, description="Where running sessions are recorded; default $XDG_STATE_HOME/kod/sessions.")
    forward_address: str | None = Field(default=None, description="Address the port-forward listens on; default 127.0.0.1 for -r native, this host's address on Docker's bridge otherwise.")
    forward_ports: str = Field(default="39400-39499", description="Ports the port-forward listens on for a viewer in a container or a pod (the Docker sidecar lets its pods reach this range of the desktop, network.host_allow); 0: any free port.")
    persist_paths: dict[str, list[str]] = Field(default_factory=dict, description='What -v keeps, per app, relative to the app\'s home (default: the catalog\'s, `cloudify apps`), e.g. {firefox = [".config/mozilla", "Downloads"]}.')
    local_commands: dict[str, list[str]] = Field(default_factory=dict, description='How to run an app installed locally (the fallback), e.g. {firefox = ["flatpak", "run", "org.mozilla.firefox"]}; default the usual command names.')

    @field_validator("geometry")
    @classmethod
    def _geometry(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9]\d{2,4}x[1-9]\d{2,4}", value):
            raise ValueError("must be WIDTHxHEIGHT, e.g. 1280x800")
        return value

    @field_validator("persist_paths")
    @classmethod
    def _relative_paths(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for app, paths in value.items():
            for path in paths:
                if not path or path.startswith("/") or ".." in path.split("/"):
                    raise ValueError(f"{app}: {path!r} must be a path relative to the app's home, without '..'")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not names.is_dns_label(value):
            raise ValueError(names.dns_label_problem(value))
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not (value and names.is_label_value(value)):
            raise ValueError("must be a valid label value: letters, digits, '-', '_', '.', at most 63")
        return value

    def image(self, name: str) -> str:
        """The reference of one of the project's images under the configured repo and tag."""
        return f"{self.image_repo}/{name}:{self.image_tag}"


@dataclass(frozen=True)
class HostEnv:
    """What cloudify takes from the desktop's environment, read once in `main`."""

    home: Path
    login: str
    display: str | None = None
    xauthority: str | None = None
    kubeconfig: str | None = None
    xdg_runtime_dir: str | None = None
    xdg_state_home: str | None = None
    docker_host: str | None = None
    #: The whole environment of the desktop session: what local viewers and browsers inherit.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> HostEnv:
        """Read the desktop facts from an environment mapping (os.environ in `main`)."""
        home = Path(environ.get("HOME") or Path.home())
        try:
            login = getpass.getuser()
        except (KeyError, OSError):
            login = environ.get("USER") or "user"
        return cls(
            home=home,
            login=login,
            display=environ.get("DISPLAY") or None,
            xauthority=environ.get("XAUTHORITY") or None,
            kubeconfig=environ.get("KUBECONFIG") or None,
            xdg_runtime_dir=environ.get("XDG_RUNTIME_DIR") or None,
            xdg_state_home=environ.get("XDG_STATE_HOME") or None,
            docker_host=environ.get("DOCKER_HOST") or None,
            environ=dict(environ),
        )


def settings_path() -> Path:
    """The config file: ~/.config/kod/cloudify.toml (or under $XDG_CONFIG_HOME)."""
    return config_home() / "kod" / "cloudify.toml"


def load(
    *, path: Path | None = None, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> CloudifySettings:
    """Defaults < the TOML file < KOD_CLOUDIFY_* < `overrides` (the flags the user gave)."""
    return load_settings(
        CloudifySettings,
        path if path is not None else settings_path(),
        env_prefix=ENV_PREFIX,
        environ=environ,
        overrides=overrides,
    )


def user_name(settings: CloudifySettings, host: HostEnv) -> str:
    """The user's name as a label value: the setting, else the login name made label-safe."""
    if settings.user:
        return settings.user
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", host.login).strip("-._")[:63].strip("-._")
    if not safe:
        raise errors.InvalidInput(
            f"cannot make a label value of the login name {host.login!r}",
            hint=f"set `user = \"...\"` in {settings_path()} or {ENV_PREFIX}USER",
        )
    return safe


def namespace(settings: CloudifySettings, user: str) -> str:
    """The sessions' namespace: the setting, else the user's own, kod-<user>."""
    if settings.namespace:
        return settings.namespace
    try:
        return names.user_namespace(user)
    except ValueError as exc:
        raise errors.InvalidInput(str(exc), hint=f"set `namespace = \"...\"` in {settings_path()} or {ENV_PREFIX}NAMESPACE") from exc


def kubeconfig_path(settings: CloudifySettings, host: HostEnv, user: str | None = None) -> Path | None:
    """The kubeconfig to use: the setting, $KUBECONFIG (first entry), ~/.kube/config, then the
    one the local cluster made for `user` (default: the login name made label-safe); None when
    none exists. Never the local cluster's admin kubeconfig."""
    candidates: list[str] = []
    if settings.kubeconfig:
        return Path(settings.kubeconfig).expanduser()
    if host.kubeconfig:
        candidates.append(host.kubeconfig.split(os.pathsep)[0])
    mine = LOCALENV_USER_KUBECONFIG.format(user=user or user_name(settings, host))
    candidates += [str(host.home / ".kube" / "config"), mine.replace("~", str(host.home), 1)]
    for cand in candidates:
        p = Path(cand).expanduser()
        if p.is_file():
            return p
    return None


def state_dir(settings: CloudifySettings, host: HostEnv) -> Path:
    """Directory of the records of this desktop's running sessions."""
    if settings.state_dir:
        return Path(settings.state_dir).expanduser()
    base = Path(host.xdg_state_home) if host.xdg_state_home else host.home / ".local" / "state"
    return base / "kod" / "sessions"
