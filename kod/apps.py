"""The application catalog and the contract between cloudify and the images.

The app images (`images/base` and the app directories built FROM it) and the viewer image
(`images/viewer`) are configured only through
the environment variables and mounted files named here; cloudify and the tests build their pods
and containers from these names, so a change here is a change of the contract on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kod import __version__

IMAGE_REPO = "kod"
IMAGE_TAG = __version__


def image_ref(name: str) -> str:
    """The local image reference of one of the project's images: 'kod/firefox:0.1.0'."""
    return f"{IMAGE_REPO}/{name}:{IMAGE_TAG}"


# --- Ports inside the app container (defaults; all overridable through the environment) ---
VNC_PORT = 5900
NOVNC_PORT = 6080
SSH_PORT = 2222
#: Port, on the app container's 127.0.0.1 only, of its sound stream: the monitor of the app's own
#: PulseAudio null sink as raw PCM in AUDIO_FORMAT (silence is not sent). Viewers fetch it with
#: `ssh -L` and play it on the desktop (`pacat --playback --raw`): sound is playback-only, the app
#: never reaches the desktop's PulseAudio.
AUDIO_PORT = 4713
#: The sound stream's sample format, rate and channels (pacat's --format, --rate, --channels).
AUDIO_FORMAT, AUDIO_RATE, AUDIO_CHANNELS = "s16le", 48000, 2
#: The viewer's playback buffer on the desktop (pacat --latency-msec), in milliseconds.
AUDIO_LATENCY_MS = 60

#: Non-root user of the app image; its home holds the app's settings and documents.
APP_USER = "kod"
APP_UID = 1000
#: Xvnc's own ceiling on updates per second (TigerVNC's FrameRate default), and the least one.
MAX_FRAME_RATE = 60
MIN_FRAME_RATE = 1
APP_HOME = "/home/kod"

# --- App container environment (images/app/entrypoint) ---
ENV_VNC_PASSWORD = "KOD_VNC_PASSWORD"              #: one-time VNC password (or the file below)
ENV_VNC_PASSWORD_FILE = "KOD_VNC_PASSWORD_FILE"    #: file holding it (from a Secret)
ENV_ENCRYPT = "KOD_ENCRYPT"                        #: "1": VNC and noVNC listen on localhost only
ENV_GEOMETRY = "KOD_GEOMETRY"                      #: e.g. "1280x800"
ENV_DEPTH = "KOD_DEPTH"                            #: 16, 24 or 32
ENV_VNC_PORT = "KOD_VNC_PORT"
ENV_NOVNC_PORT = "KOD_NOVNC_PORT"
ENV_SSH_PORT = "KOD_SSH_PORT"
ENV_AUDIO_PORT = "KOD_AUDIO_PORT"
ENV_CONNECT_TIMEOUT = "KOD_CONNECT_TIMEOUT"        #: seconds to wait for a first viewer; 0 = forever
ENV_FRAME_RATE = "KOD_FRAME_RATE"                  #: most screen updates per second sent to a viewer (1-60)
ENV_AUTHORIZED_KEYS_FILE = "KOD_AUTHORIZED_KEYS_FILE"  #: the session's public key (from a Secret)
ENV_HOST_KEY_FILE = "KOD_SSH_HOST_KEY_FILE"        #: the session's sshd host key (from a Secret)
ENV_APP_ARGS = "KOD_APP_ARGS"                      #: extra arguments for the app (shell words)

#: Where cloudify mounts the session Secret in the app container.
APP_SECRET_DIR = "/run/secrets/kod"

# --- Files of the session Secret. When a *_FILE variable is not set, the entrypoints use the file
# of that name in the secret directory if it exists. ---
SECRET_VNC_PASSWORD = "vnc-password"            #: app and viewer: the one-time VNC password
SECRET_AUTHORIZED_KEYS = "authorized_keys"      #: app: the session's public key
SECRET_HOST_KEY = "ssh_host_ed25519_key"        #: app: sshd's private host key
SECRET_SSH_KEY = "id_ed25519"                   #: viewer: the session's private key
SECRET_KNOWN_HOSTS = "known_hosts"              #: viewer: known_hosts lines (any host pattern) or the bare public key

# --- Exit codes of the app container (besides the app's own, 0 when the user closes it) ---
APP_EXIT_FAILURE = 1          #: a part of the session (X server, sshd, websockify) failed
APP_EXIT_CONFIG = 2           #: bad configuration (the log says which variable)
APP_EXIT_NO_VIEWER = 124      #: no viewer connected (or none came back) within KOD_CONNECT_TIMEOUT

# --- Viewer container environment (images/viewer/entrypoint) ---
ENV_TARGET_HOST = "KOD_TARGET_HOST"                #: address of the app (node IP, service, localhost)
ENV_TARGET_VNC_PORT = "KOD_TARGET_VNC_PORT"        #: port of VNC at that address (unencrypted mode)
ENV_TARGET_VNC_HOST = "KOD_TARGET_VNC_HOST"        #: where VNC is in unencrypted mode (default: the target host)
ENV_TARGET_SSH_PORT = "KOD_TARGET_SSH_PORT"        #: port of sshd at that address
ENV_QUALITY = "KOD_QUALITY"                        #: JPEG quality 0-9
ENV_COMPRESSION = "KOD_COMPRESSION"                #: zlib compression 0-9 (original: 0-6)
ENV_PULSE_SOCKET = "KOD_PULSE_SOCKET"              #: path, in the viewer, of the desktop's pulse socket
ENV_SSH_KEY_FILE = "KOD_SSH_KEY_FILE"              #: the session's private key
ENV_KNOWN_HOSTS_FILE = "KOD_KNOWN_HOSTS_FILE"      #: pins the app's host key
ENV_VIEWER_ARGS = "KOD_VIEWER_ARGS"                #: extra vncviewer arguments
ENV_AUDIO_LATENCY_MS = "KOD_AUDIO_LATENCY_MS"      #: playback buffer on the desktop (default AUDIO_LATENCY_MS)
# The viewer also reads ENV_ENCRYPT, ENV_VNC_PASSWORD(_FILE), ENV_VNC_PORT and ENV_AUDIO_PORT (the
# ports inside the app container: both -L targets), and ENV_CONNECT_TIMEOUT
# (how long to wait for the app to accept connections), plus DISPLAY and XAUTHORITY.
#: Where cloudify mounts the viewer's session Secret.
VIEWER_SECRET_DIR = "/run/secrets/kod"
#: The host key alias the viewer pins (a bare key in SECRET_KNOWN_HOSTS is filed under it).
VIEWER_HOST_KEY_ALIAS = "kod-app"

# --- Exit codes of the viewer container (besides vncviewer's 0 when the session ends) ---
VIEWER_EXIT_CONFIG = 2        #: bad configuration, or the desktop's X display cannot be opened
VIEWER_EXIT_AUTH = 3          #: the app refused the VNC password (wrong or expired token)
VIEWER_EXIT_SSH = 4           #: SSH failed: host key mismatch, session key refused, forward refused
VIEWER_EXIT_UNREACHABLE = 5   #: the app did not accept connections within ENV_CONNECT_TIMEOUT


@dataclass(frozen=True)
class App:
    """One application cloudify can run."""

    name: str
    #: Image name under IMAGE_REPO.
    image: str
    #: What the app's window title contains (tests find the window by it).
    window_title: str
    #: Commands that run the app when it is installed locally (the fallback), in order of preference.
    local_commands: tuple[str, ...]
    #: Paths under APP_HOME that hold settings and documents; a PVC is mounted there with -v.
    persist_paths: tuple[str, ...]
    #: Extended resources the pod must request (e.g. {"nvidia.com/gpu": "1"}).
    extended_resources: dict[str, str] = field(default_factory=dict)
    #: Default requests/limits for the app container.
    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "500m", "memory": "512Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"memory": "4Gi"})
    description: str = ""

    @property
    def image_ref(self) -> str:
        return image_ref(self.image)


APPS: dict[str, App] = {
    a.name: a
    for a in (
        App(
            name="firefox",
            image="firefox",
            window_title="Mozilla Firefox",
            local_commands=("firefox-esr", "firefox"),
            # Firefox 153 ESR keeps new profiles in ~/.config/mozilla (XDG); ~/.mozilla only when it
            # already has one.
            persist_paths=(".config/mozilla", ".mozilla", "Downloads"),
            description="Firefox ESR web browser",
        ),
        App(
            name="libreoffice",
            image="libreoffice",
            window_title="LibreOffice",
            local_commands=("libreoffice",),
            persist_paths=(".config/libreoffice", "Documents"),
            description="LibreOffice office suite",
        ),
        App(
            name="blender",
            image="blender",
            window_title="Blender",
            local_commands=("blender",),
            persist_paths=(".config/blender", "Documents"),
            limits={"memory": "6Gi"},
            description="Blender 3D suite (software rendering)",
        ),
        App(
            name="cuda-blender",
            image="cuda-blender",
            window_title="Blender",
            local_commands=("blender",),
            persist_paths=(".config/blender", "Documents"),
            extended_resources={"nvidia.com/gpu": "1"},
            limits={"memory": "6Gi"},
            description="Blender on an NVIDIA GPU node (CUDA)",
        ),
    )
}

VIEWER_IMAGE = image_ref("viewer")
#: The app base image (images/base); the app images build FROM it.
APP_BASE_IMAGE = image_ref("app-base")
#: The project's own services (images/services, one build target each).
SERVICE_IMAGES: dict[str, str] = {name: image_ref(name) for name in ("interlink", "docker-sidecar", "vk")}
