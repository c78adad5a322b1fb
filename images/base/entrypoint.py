#!/usr/bin/python3
"""kod app entrypoint: one app on a virtual X display, shown over VNC and noVNC, ending with the app.

Runs as the image's non-root user (kod, uid 1000) and starts, in order: Xvnc (the X server and
VNC server in one), a D-Bus session bus, openbox, websockify serving noVNC, PulseAudio (the app's
own sound server: a null sink), the sound stream, sshd (only when the session has a key) and the
app, which is the container command (CMD, or a pod's `args`) plus KOD_APP_ARGS. It supervises them
as PID 1 and ends with the app.

Sound is playback-only by construction: the app plays into this container's own PulseAudio, and
whoever connects to 127.0.0.1:KOD_AUDIO_PORT gets the null sink's monitor as raw PCM (s16le,
48 kHz, stereo; silence is not sent). The viewer brings that stream over its `ssh -L` and plays it
on the desktop; nothing here can reach the desktop's sound server, so nothing here can record it.

Configuration (the contract with cloudify; the names are in kod/apps.py):
  KOD_VNC_PASSWORD | KOD_VNC_PASSWORD_FILE  the session's one-time VNC password (required; VNC
                                            authentication uses its first 8 characters)
  KOD_ENCRYPT=1          VNC and noVNC listen on 127.0.0.1 only, so they are reachable only
                         through an `ssh -L` of the session's key
  KOD_GEOMETRY=1280x800  KOD_DEPTH=24 (16, 24 or 32)
  KOD_VNC_PORT=5900  KOD_NOVNC_PORT=6080  KOD_SSH_PORT=2222
  KOD_AUDIO_PORT=4713    the sound stream's port (127.0.0.1 only; reached through ssh -L)
  KOD_CONNECT_TIMEOUT=60 seconds without a viewer after which the session gives up (0: never);
                         the same time applies after the last viewer disconnects
  KOD_FRAME_RATE=60      the most screen updates per second Xvnc sends a viewer (1-60): what a
                         moving picture costs on a slow link is about proportional to it
  KOD_AUTHORIZED_KEYS_FILE  the session's public key(s); sshd starts only when present
  KOD_SSH_HOST_KEY_FILE     sshd's host key (an ephemeral one is made when absent)
  KOD_APP_ARGS           extra arguments for the app, as shell words
  KOD_APP                the app's name (the VNC desktop name, shown in the viewer's title)
When a *_FILE variable is not set, the file of the same role in /run/secrets/kod is used if present.

Exit codes: the app's own exit code when the app ends (0 when the user closes it normally);
124 when no viewer connected (or none came back) within KOD_CONNECT_TIMEOUT; 2 for bad
configuration; 1 when a part of the session (X server, sshd, websockify, ...) fails;
128+N when the session is stopped by signal N before the app has ended.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = Path("/run/kod")
SECRET_DIR = Path("/run/secrets/kod")
NOVNC_DIR = "/usr/share/novnc"
OPENBOX_CONFIG = "/etc/kod/openbox.xml"
#: The app's PulseAudio: its socket (PULSE_SERVER) and runtime/state files, in the session's dir.
PULSE_DIR = RUN_DIR / "pulse"
PULSE_SOCKET = PULSE_DIR / "native"
#: The null sink of pulse.pa: the app's "speakers"; its monitor is the stream the viewer plays.
PULSE_SINK = "kod"
#: The stream's format (kod.apps.AUDIO_FORMAT/RATE/CHANNELS; the viewer plays it as such).
AUDIO_FORMAT, AUDIO_RATE, AUDIO_CHANNELS = "s16le", 48000, 2
#: parec's buffer: small, so that the stream follows the app within a few tens of milliseconds.
AUDIO_RECORD_LATENCY_MS = 20
#: Seconds PulseAudio gets to answer on its socket at start.
PULSE_START_TIMEOUT = 10.0
#: The log line that says the app's first window is shown (cloudify matches this prefix).
WINDOW_SHOWN = "app window shown"
#: Seconds after the app's start during which its first window is looked for.
WINDOW_WATCH_LIMIT = 600.0
PROPERTY_CHANGE_MASK = 1 << 22
#: Parts of the session whose end does not end it (the app goes on without sound).
OPTIONAL = frozenset({"pulseaudio", "window-watch"})
#: Set in the environment of the entrypoint's own helper process (the window watch).
ROLE_ENV, ROLE_WINDOW_WATCH = "KOD_ENTRYPOINT_ROLE", "window-watch"
DISPLAY_NUMBER = 0
APP_USER = "kod"
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NO_VIEWER = 124
#: Seconds the app gets to end after SIGTERM before it is killed (cloudify gives the pod 10 s).
STOP_GRACE = 8.0
#: Seconds the helper processes get to end once the app has ended.
CLEANUP_GRACE = 2.0


def log(message: str) -> None:
    print(f"kod: {message}", file=sys.stderr, flush=True)


class ConfigError(Exception):
    """Bad configuration: the message says what is wrong and what to set."""


@dataclass(frozen=True)
class Config:
    app: str
    command: list[str]
    password: str
    encrypt: bool
    width: int
    height: int
    depth: int
    vnc_port: int
    novnc_port: int
    ssh_port: int
    audio_port: int
    connect_timeout: int
    frame_rate: int
    authorized_keys: str | None
    host_key: Path | None


def _port(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "") or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{name}={raw!r} is not a TCP port (1-65535)")
    return int(raw)


def _secret_file(env: dict[str, str], name: str, default_name: str) -> Path | None:
    """The file named by `name`, else the default file in the secret dir, else None."""
    if env.get(name):
        path = Path(env[name])
        if not path.is_file():
            raise ConfigError(f"{name}={path} does not exist or is not a file (is the session Secret mounted?)")
        return path
    default = SECRET_DIR / default_name
    return default if default.is_file() else None


def load_config(env: dict[str, str], argv: list[str]) -> Config:
    """Reads and checks the environment; raises ConfigError with what to fix."""
    password = env.get("KOD_VNC_PASSWORD", "")
    if not password:
        pw_file = _secret_file(env, "KOD_VNC_PASSWORD_FILE", "vnc-password")
        if pw_file is not None:
            password = pw_file.read_text().strip()
    if not password:
        raise ConfigError("no VNC password: set KOD_VNC_PASSWORD or KOD_VNC_PASSWORD_FILE (the session's one-time password)")
    if len(password) < 6:
        raise ConfigError("the VNC password must have at least 6 characters")
    geometry = env.get("KOD_GEOMETRY", "") or "1280x800"
    match = re.fullmatch(r"(\d{2,5})x(\d{2,5})", geometry)
    if not match:
        raise ConfigError(f"KOD_GEOMETRY={geometry!r} is not WIDTHxHEIGHT (e.g. 1280x800)")
    depth = env.get("KOD_DEPTH", "") or "24"
    if depth not in ("16", "24", "32"):
        raise ConfigError(f"KOD_DEPTH={depth!r}: the colour depth must be 16, 24 or 32")
    encrypt = env.get("KOD_ENCRYPT", "0") or "0"
    if encrypt not in ("0", "1"):
        raise ConfigError(f"KOD_ENCRYPT={encrypt!r} must be 0 or 1")
    timeout = env.get("KOD_CONNECT_TIMEOUT", "") or "60"
    if not timeout.isdigit():
        raise ConfigError(f"KOD_CONNECT_TIMEOUT={timeout!r} must be a whole number of seconds (0: wait forever)")
    frame_rate = env.get("KOD_FRAME_RATE", "") or "60"
    if not frame_rate.isdigit() or not 1 <= int(frame_rate) <= 60:
        raise ConfigError(f"KOD_FRAME_RATE={frame_rate!r} must be a whole number of updates per second, 1-60")
    keys_file = _secret_file(env, "KOD_AUTHORIZED_KEYS_FILE", "authorized_keys")
    authorized_keys = keys_file.read_text() if keys_file else None
    if authorized_keys is not None and not authorized_keys.strip():
        raise ConfigError(f"{keys_file} is empty: it must hold the session's public key")
    try:
        extra = shlex.split(env.get("KOD_APP_ARGS", ""))
    except ValueError as exc:
        raise ConfigError(f"KOD_APP_ARGS cannot be split into words: {exc}") from None
    command = list(argv) + extra
    if not command:
        raise ConfigError("no app to run: give the app command as the container command (or use an app image)")
    return Config(
        app=env.get("KOD_APP", "") or Path(command[0]).name,
        command=command,
        password=password,
        encrypt=encrypt == "1",
        width=int(match.group(1)),
        height=int(match.group(2)),
        depth=int(depth),
        vnc_port=_port(env, "KOD_VNC_PORT", 5900),
        novnc_port=_port(env, "KOD_NOVNC_PORT", 6080),
        ssh_port=_port(env, "KOD_SSH_PORT", 2222),
        audio_port=_port(env, "KOD_AUDIO_PORT", 4713),
        connect_timeout=int(timeout),
        frame_rate=int(frame_rate),
        authorized_keys=authorized_keys,
        host_key=_secret_file(env, "KOD_SSH_HOST_KEY_FILE", "ssh_host_ed25519_key"),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Writes a file only its owner can read (created 0600, never briefly wider)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_vnc_password(password: str, path: Path) -> None:
    out = subprocess.run(["vncpasswd", "-f"], input=password.encode() + b"\n", capture_output=True, check=False)
    if out.returncode != 0 or not out.stdout:
        raise ConfigError(f"vncpasswd failed: {out.stderr.decode(errors='replace').strip()}")
    _write_private(path, out.stdout)


def write_xauthority(path: Path, display: int) -> None:
    """An X authority file with one FamilyWild MIT-MAGIC-COOKIE-1 entry: Xvnc accepts only
    clients that present the cookie, i.e. processes of this container that can read the file."""
    def field(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    entry = struct.pack(">H", 0xFFFF) + field(b"") + field(str(display).encode()) + field(b"MIT-MAGIC-COOKIE-1") + field(os.urandom(16))
    _write_private(path, entry)


def sshd_config(cfg: Config) -> str:
    """sshd as the session user: only the session key, only the forwards a viewer needs (VNC,
    noVNC and the sound stream on this container's localhost, with -L); no remote forwarding, no
    shell, no pty, no agent, X11 or unix-socket forwarding."""
    opens = " ".join(f"{h}:{p}" for p in (cfg.vnc_port, cfg.novnc_port, cfg.audio_port) for h in ("localhost", "127.0.0.1"))
    return "\n".join([
        f"Port {cfg.ssh_port}",
        f"HostKey {RUN_DIR / 'ssh_host_key'}",
        f"AuthorizedKeysFile {RUN_DIR / 'authorized_keys'}",
        "PidFile none",
        "UsePAM no",
        f"AllowUsers {APP_USER}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        "PermitTTY no",
        "PermitUserRC no",
        "PermitUserEnvironment no",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "AllowStreamLocalForwarding no",
        "PermitTunnel no",
        "GatewayPorts no",
        # Only -L (the viewer reaching VNC, noVNC and the sound stream here); no -R: nothing in
        # this container may reach back into the viewer's side (the desktop).
        "AllowTcpForwarding local",
        f"PermitOpen {opens}",
        "PermitListen none",
        'ForceCommand echo "kod: this session key only carries port forwards"; exit 1',
        "ClientAliveInterval 10",
        "ClientAliveCountMax 3",
        "LoginGraceTime 20",
        "MaxAuthTries 3",
        "LogLevel VERBOSE",
        "",
    ])


def pulse_script() -> str:
    """The app's PulseAudio: a null sink as its speakers (whose monitor is the stream the viewer
    plays) and a socket for this container's processes. No module reaches outside the container."""
    return "\n".join([
        f"load-module module-null-sink sink_name={PULSE_SINK} rate={AUDIO_RATE} format={AUDIO_FORMAT} "
        f"channels={AUDIO_CHANNELS} sink_properties=device.description={PULSE_SINK}",
        f"set-default-sink {PULSE_SINK}",
        f"set-default-source {PULSE_SINK}.monitor",
        # Anonymous: the socket's directory is the session user's own (0700).
        f"load-module module-native-protocol-unix socket={PULSE_SOCKET} auth-anonymous=1 auth-cookie-enabled=0",
        "",
    ])


def authorized_keys(text: str) -> str:
    """The session keys, each restricted to port forwarding (a second fence besides sshd_config)."""
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("ssh-", "ecdsa-", "sk-")):
            line = f"restrict,port-forwarding {line}"
        lines.append(line)
    return "\n".join(lines) + "\n"


class Session:
    """The session's processes; PID 1 reaps them all and ends with the app."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.children: dict[int, str] = {}
        self.app_pid: int | None = None
        self.viewer_seen = threading.Event()
        self.gave_up = threading.Event()
        self.stop_signal: int | None = None
        self.env = dict(os.environ)
        self.env.update({
            "DISPLAY": f":{DISPLAY_NUMBER}",
            "XAUTHORITY": str(RUN_DIR / "Xauthority"),
            "PULSE_SERVER": f"unix:{PULSE_SOCKET}",
            # The daemon's runtime and state files stay in the session's directory, not in a
            # home that may be a persistent volume (or not writable).
            "PULSE_RUNTIME_PATH": str(PULSE_DIR),
            "PULSE_STATE_PATH": str(PULSE_DIR),
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={RUN_DIR / 'bus'}",
            "HOME": self.env.get("HOME", "/home/kod"),
        })
        # The session's password stays out of the app's environment.
        self.env.pop("KOD_VNC_PASSWORD", None)

    def spawn(self, name: str, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        kwargs.setdefault("env", self.env)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
        self.children[proc.pid] = name
        return proc

    def start_xvnc(self) -> None:
        cfg = self.cfg
        read_fd, write_fd = os.pipe()
        argv = [
            "Xvnc", f":{DISPLAY_NUMBER}", "-displayfd", str(write_fd),
            "-geometry", f"{cfg.width}x{cfg.height}", "-depth", str(cfg.depth),
            "-rfbport", str(cfg.vnc_port), "-rfbauth", str(RUN_DIR / "vncpasswd"),
            "-SecurityTypes", "VncAuth", "-desktop", cfg.app,
            "-auth", str(RUN_DIR / "Xauthority"), "-nolisten", "tcp",
            "-FrameRate", str(cfg.frame_rate),
        ]
        if cfg.encrypt:
            argv.append("-localhost")
        if cfg.connect_timeout:
            # Counted from the server's start, and again from each moment no viewer is connected.
            argv += ["-MaxDisconnectionTime", str(cfg.connect_timeout)]
        proc = self.spawn("Xvnc", argv, pass_fds=(write_fd,), stderr=subprocess.PIPE)
        os.close(write_fd)
        threading.Thread(target=self._watch_xvnc_log, args=(proc,), daemon=True).start()
        # Xvnc writes its display number to the pipe once it accepts clients.
        with os.fdopen(read_fd) as ready:
            line = ready.readline()
        if not line.strip():
            raise RuntimeError("the X server (Xvnc) did not start; see its messages above")

    def _watch_xvnc_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            sys.stderr.write(f"Xvnc: {line}\n")
            sys.stderr.flush()
            # Logged when the server sends its ServerInit: after a successful authentication.
            if "Server default pixel format" in line:
                self.viewer_seen.set()
            elif "MaxDisconnectionTime reached" in line:
                self.gave_up.set()

    def start_sshd(self) -> None:
        cfg = self.cfg
        assert cfg.authorized_keys is not None
        host_key = RUN_DIR / "ssh_host_key"
        if cfg.host_key is not None:
            _write_private(host_key, cfg.host_key.read_bytes())
        else:
            host_key.unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kod-ephemeral", "-f", str(host_key)],
                           check=True, stdin=subprocess.DEVNULL)
            log(f"no KOD_SSH_HOST_KEY_FILE: made an ephemeral host key: {(RUN_DIR / 'ssh_host_key.pub').read_text().strip()}")
        _write_private(RUN_DIR / "authorized_keys", authorized_keys(cfg.authorized_keys).encode())
        (RUN_DIR / "sshd_config").write_text(sshd_config(cfg))
        check = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(RUN_DIR / "sshd_config")], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd refuses its configuration: {check.stderr.strip()}")
        self.spawn("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(RUN_DIR / "sshd_config")])

    def start_sound(self) -> bool:
        """The app's own PulseAudio (a null sink, see pulse.pa) and the stream of its monitor on
        127.0.0.1:audio_port. Without them the app is silent but the session goes on."""
        PULSE_DIR.mkdir(mode=0o700, exist_ok=True)
        PULSE_SOCKET.unlink(missing_ok=True)
        script = PULSE_DIR / "kod.pa"
        script.write_text(pulse_script())
        # -n: only the script's modules (none of a desktop session's: X11 bell, D-Bus, ALSA, ...).
        pulse = self.spawn("pulseaudio", [
            "pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
            "--use-pid-file=no", "--realtime=no", "--high-priority=no", "--log-target=stderr", "--log-level=error",
        ])
        deadline = time.monotonic() + PULSE_START_TIMEOUT
        while not _answers(PULSE_SOCKET):
            if pulse.poll() is not None or time.monotonic() > deadline:
                log("warning: PulseAudio did not start (see its messages above): the app has no sound")
                return False
            time.sleep(0.02)
        try:
            server = socket.create_server(("127.0.0.1", self.cfg.audio_port))
        except OSError as exc:
            log(f"warning: cannot serve the sound stream on 127.0.0.1:{self.cfg.audio_port}: {exc}; the app has no sound")
            return False
        threading.Thread(target=self._serve_sound, args=(server,), daemon=True).start()
        return True

    def _serve_sound(self, server: socket.socket) -> None:
        """Each connection gets the null sink's monitor, from the moment it connects."""
        while True:
            conn, _ = server.accept()
            threading.Thread(target=self._stream_sound, args=(conn,), daemon=True).start()

    def _stream_sound(self, conn: socket.socket) -> None:
        # parec is not one of self.children: PID 1 reaps it as an orphan, it ends nothing.
        argv = ["parec", "--raw", f"--device={PULSE_SINK}.monitor", f"--format={AUDIO_FORMAT}",
                f"--rate={AUDIO_RATE}", f"--channels={AUDIO_CHANNELS}", f"--latency-msec={AUDIO_RECORD_LATENCY_MS}",
                "--client-name=kod-sound-stream"]
        try:
            rec = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        except OSError as exc:
            log(f"warning: parec could not start: {exc}")
            conn.close()
            return
        assert rec.stdout is not None
        log("a viewer takes the sound stream")
        try:
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Silence is not sent: no bandwidth while the app is quiet, and any lag the
                # viewer's side built up (its sound card's clock against ours) drains in each
                # pause. The player treats the gap as an underrun and starts again on new data.
                while chunk := os.read(rec.stdout.fileno(), 16384):
                    if chunk.count(0) != len(chunk):
                        conn.sendall(chunk)
        except OSError:
            pass  # the viewer went away
        finally:
            rec.kill()
            rec.stdout.close()
        log("a viewer left the sound stream")

    def start(self) -> None:
        cfg = self.cfg
        write_vnc_password(cfg.password, RUN_DIR / "vncpasswd")
        write_xauthority(RUN_DIR / "Xauthority", DISPLAY_NUMBER)
        self.start_xvnc()
        self.spawn("dbus-daemon", ["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address={self.env['DBUS_SESSION_BUS_ADDRESS']}"])
        self.spawn("openbox", ["openbox", "--config-file", OPENBOX_CONFIG])
        listen = f"127.0.0.1:{cfg.novnc_port}" if cfg.encrypt else str(cfg.novnc_port)
        self.spawn("websockify", ["websockify", "--web", NOVNC_DIR, listen, f"127.0.0.1:{cfg.vnc_port}"],
                   stdout=subprocess.DEVNULL)
        # sshd first: a viewer may be knocking already; the sound stream follows within a moment
        # (the viewer fetches it again until it is there).
        if cfg.authorized_keys is not None:
            self.start_sshd()
        else:
            log("no authorized key (KOD_AUTHORIZED_KEYS_FILE): sshd not started, so no sound and no encrypted access")
        sound = self.start_sound()
        where = "127.0.0.1 only (reach them through ssh -L)" if cfg.encrypt else "all addresses"
        log(f"display :{DISPLAY_NUMBER} {cfg.width}x{cfg.height}x{cfg.depth}; VNC on {cfg.vnc_port} and noVNC on "
            f"{cfg.novnc_port} at {where}; sshd on {cfg.ssh_port}" + ("" if cfg.authorized_keys else " (off)")
            + (f"; sound stream on 127.0.0.1:{cfg.audio_port} (playback only)" if sound else "; no sound"))
        # In a process of its own: libX11 ends the process that holds a connection when the X
        # server goes away (as it does when no viewer comes), and PID 1 must stay to say why.
        self.spawn("window-watch", [sys.executable, os.path.abspath(__file__)], env={**self.env, ROLE_ENV: ROLE_WINDOW_WATCH})
        app = self.spawn("app", cfg.command)
        self.app_pid = app.pid
        log(f"started {cfg.app}: {shlex.join(cfg.command)} (pid {app.pid})")
        if self.stop_signal is not None:  # a stop signal came while the session was starting
            self._stop_app()

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_signal is not None:
            return
        self.stop_signal = signum
        log(f"stopping on signal {signal.Signals(signum).name}: asking the app to quit")
        self._stop_app()

    def _stop_app(self) -> None:
        """SIGTERM to the app now, SIGKILL if it is still there after STOP_GRACE."""
        app_pid = self.app_pid
        if app_pid is None:
            return
        _kill(app_pid, signal.SIGTERM)

        def kill_late() -> None:
            if app_pid in self.children:
                log(f"the app did not end within {STOP_GRACE:.0f} s of the stop signal; killing it")
                _kill(app_pid, signal.SIGKILL)

        timer = threading.Timer(STOP_GRACE, kill_late)
        timer.daemon = True
        timer.start()

    def supervise(self) -> int:
        """Waits for children until the app or an essential part ends; returns the exit code."""
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                return EXIT_FAILURE
            name = self.children.pop(pid, None)
            if name is None:
                continue  # an orphan reparented to PID 1, now reaped
            code = os.waitstatus_to_exitcode(status)
            if name == "app":
                # An app that fails may have lost its display: is that because Xvnc gave up?
                if self.gave_up.wait(0.2 if code != 0 else 0):
                    return self._no_viewer()
                if self.stop_signal is not None:
                    log(f"the app ended (exit code {code}) after signal {self.stop_signal}")
                    return 128 + self.stop_signal
                log(f"the app ended with exit code {code}; ending the session")
                return code if code >= 0 else 128 - code
            if name in OPTIONAL:
                if name == "pulseaudio":
                    log(f"PulseAudio ended (exit code {code}): the app has no sound from now on")
                continue
            # When Xvnc gives up, its X clients (openbox, the app) may be reaped before it: give
            # the log reader a moment to see Xvnc's last line, which says why.
            if self.gave_up.wait(0.5):
                return self._no_viewer()
            what = "the X server (Xvnc)" if name == "Xvnc" else name
            log(f"{what} ended unexpectedly (exit code {code}); ending the session")
            return EXIT_FAILURE

    def _no_viewer(self) -> int:
        if self.viewer_seen.is_set():
            log(f"the viewer disconnected and none came back within {self.cfg.connect_timeout} s "
                "(KOD_CONNECT_TIMEOUT); ending the session")
        else:
            log(f"no viewer connected within {self.cfg.connect_timeout} s (KOD_CONNECT_TIMEOUT); giving up")
        return EXIT_NO_VIEWER

    def stop_all(self) -> None:
        """SIGTERM to every process left, then SIGKILL after a short grace."""
        for pid in list(self.children):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + CLEANUP_GRACE
        while self.children:
            try:
                pid, _ = _wait_until(deadline)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.children.pop(pid, None)
        for pid in list(self.children):
            _kill(pid, signal.SIGKILL)


def watch_app_window() -> int:
    """Logs WINDOW_SHOWN and the title once the app's first top-level window is shown (cloudify
    reads it for its "first frame" timing). Looks when the window manager changes a property of
    the root window (it does when it manages, maps and focuses a window), and once a second in case
    a change was missed; gives up after WINDOW_WATCH_LIMIT seconds. Runs as a child process (see
    Session.start), with the session's DISPLAY and XAUTHORITY."""
    try:
        xlib = ctypes.CDLL("libX11.so.6")
    except OSError:
        return 0
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XDefaultRootWindow.restype = ctypes.c_ulong
    xlib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    xlib.XSelectInput.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_long]
    xlib.XConnectionNumber.argtypes = [ctypes.c_void_p]
    xlib.XPending.argtypes = [ctypes.c_void_p]
    xlib.XNextEvent.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    display = xlib.XOpenDisplay(f":{DISPLAY_NUMBER}".encode())
    if not display:
        return 0
    xlib.XSelectInput(display, xlib.XDefaultRootWindow(display), PROPERTY_CHANGE_MASK)
    event = ctypes.create_string_buffer(192)  # sizeof(XEvent)
    fd = xlib.XConnectionNumber(display)
    deadline = time.monotonic() + WINDOW_WATCH_LIMIT
    while time.monotonic() < deadline:
        title = _shown_window()
        if title is not None:
            log(f"{WINDOW_SHOWN}: {title}")
            return 0
        select.select([fd], [], [], 1.0)
        while xlib.XPending(display):
            xlib.XNextEvent(display, event)
    return 0


def _shown_window() -> str | None:
    """The title of a visible named window on the display, if there is one."""
    out = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", ".", "getwindowname", "%1"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    lines = out.stdout.splitlines()
    return lines[0] if out.returncode == 0 and lines else None


def _answers(path: Path) -> bool:
    """Whether a server accepts connections on the unix socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_until(deadline: float) -> tuple[int, int]:
    """os.wait() with a deadline: (0, 0) when it passes first."""
    while True:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            return pid, status
        if time.monotonic() >= deadline:
            return 0, 0
        time.sleep(0.02)


def main() -> int:
    if os.getuid() == 0:
        log("refusing to run as root: run the image as its user kod (uid 1000), which is the image's default")
        return EXIT_USAGE
    try:
        cfg = load_config(dict(os.environ), sys.argv[1:])
    except ConfigError as exc:
        log(f"configuration error: {exc}")
        return EXIT_USAGE
    if not os.access(RUN_DIR, os.W_OK):
        log(f"{RUN_DIR} is not writable by uid {os.getuid()}: run the image as uid 1000 (its default user)")
        return EXIT_USAGE
    session = Session(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, session.on_signal)
    try:
        session.start()
        code = session.supervise()
    except (ConfigError, RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        log(f"the session could not start: {exc}")
        code = EXIT_FAILURE
    session.stop_all()
    return code


if __name__ == "__main__":
    sys.exit(watch_app_window() if os.environ.get(ROLE_ENV) == ROLE_WINDOW_WATCH else main())
