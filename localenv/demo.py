"""`python -m localenv demo [APP]`: the README's first command (`make demo`).

    python -m localenv demo                     # Firefox from a cluster pod, on your screen or a virtual one
    python -m localenv demo firefox --once --screenshot /tmp/firefox.png   # what the e2e test runs

What it does, in order:

1. what `up --demo` does: Debian packages, the Docker engine, the cluster (or the one KUBECONFIG
   names), the app's and the viewer's images (built when their inputs changed, then imported into
   the cluster) and the desktop stack (the virtual node);
2. picks the screen: the user's own when DISPLAY's X server answers and PulseAudio answers;
   otherwise a `VirtualDesktop` (Xvfb, PulseAudio with null-sink speakers; files under
   `<data_dir>/demo/`) with a VNC server on 127.0.0.1 and a random password, to watch it live;
3. runs `cloudify APP` on that screen against the cluster; waits for the app's viewer window,
   saves a screenshot (default `<data_dir>/demo/<app>.png`) and prints its path;
4. waits until the session ends: the user closes the app, or presses Ctrl-C (forwarded to
   cloudify once per press, so that it removes what it created). `--once` ends the session right
   after the screenshot, as Ctrl-C would.

The exit code is cloudify's; a `--once` session that ended when asked exits 0.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from kod import apps, errors
from localenv import cluster, desktop_stack, host, images, users
from localenv.handle import ClusterHandle
from localenv.progress import Progress
from localenv.settings import LocalEnvSettings
from localenv.virtual_desktop import (Box, Image, VirtualDesktop, Window, decode_png, die_with_parent, display_opens,
                                      drawn, tool, wait_for, window_title_pattern)

#: Where the Docker sidecar lets viewer pods mount the desktop's kod sound socket from (its
#: allow-list) and where cloudify looks for it (`kod_pulse_dir`).
KOD_PULSE_DIR = Path("/run/kod/pulse")
#: The demo's sound socket directories in KOD_PULSE_DIR: DEMO_SOUND_PREFIX + random hex.
DEMO_SOUND_PREFIX = "demo-"
#: cloudify's exit code after Ctrl-C (the shell's convention): what `--once` expects.
EXIT_INTERRUPTED = 130
#: Seconds for the app's viewer window to show (cloudify has its own per-phase timeouts: this
#: only guards against a session that hangs without failing).
WINDOW_TIMEOUT = 300.0
#: Seconds for the window's content to be drawn once it shows.
DRAWN_TIMEOUT = 60.0
#: Seconds cloudify gets to clean up after SIGINT.
CLEANUP_TIMEOUT = 120.0


class SessionFailed(errors.Unavailable):
    """cloudify failed, or its session did not show the app; `exit_code` is the command's."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code or 1


@dataclass(frozen=True)
class DemoOptions:
    """The command line of `demo`."""

    app: str = "firefox"
    once: bool = False
    screenshot: Path | None = None


def demo_dir(settings: LocalEnvSettings) -> Path:
    """Files of the demo: the virtual desktop's, the screenshots."""
    return settings.data_dir.expanduser() / "demo"


# --- 1. everything up -----------------------------------------------------------------------------

def prepare(settings: LocalEnvSettings, app: apps.App, progress: Progress,
            environ: Mapping[str, str]) -> tuple[ClusterHandle, desktop_stack.Stack]:
    """The cluster, the app's and the viewer's images in it, and the desktop stack (idempotent)."""
    target = cluster.up_or_reuse(settings, progress, kubeconfig=environ.get("KUBECONFIG"),
                                 node_name=environ.get("KOD_TEST_NODE"), image_loader=environ.get("KOD_IMAGE_LOADER"))
    images.build_and_import(target, progress, only=[app.image, "viewer"])
    stack = desktop_stack.up(progress=progress, cluster=target)
    return target, stack


# --- 2. the screen --------------------------------------------------------------------------------

def why_not_users_desktop(environ: Mapping[str, str]) -> str | None:
    """None when the user has a desktop to show the app on (DISPLAY's X server answers and
    PulseAudio answers); else why not, in a few words."""
    display = environ.get("DISPLAY")
    if not display:
        return "DISPLAY is not set"
    if not display_opens(display, environ):
        return f"the X server of DISPLAY={display} does not answer"
    pactl = shutil.which("pactl")
    if pactl is None:
        return "pactl is not installed, so PulseAudio cannot be checked"
    try:
        info = subprocess.run([pactl, "info"], env=dict(environ), capture_output=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return "PulseAudio does not answer (pactl info timed out)"
    return None if info.returncode == 0 else "no PulseAudio answers"


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """One virtual-desktop demo at a time: they share `directory`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / "demo.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise errors.Conflict(f"another demo runs on the virtual desktop (pid {lock.read().strip() or '?'})",
                                  hint="end it (Ctrl-C in its terminal, or close its app) and run this again") from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def remove_stale_sound_dirs() -> list[Path]:
    """Sound socket directories of demos that were killed (SIGKILL leaves no time to clean up).
    Called under the demo lock: no other demo's directory can be in use."""
    stale = sorted(KOD_PULSE_DIR.glob(f"{DEMO_SOUND_PREFIX}*")) if KOD_PULSE_DIR.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def watch_instructions(vnc_port: int, password_file: Path, passwd_file: Path, address: str) -> str:
    """How to watch the virtual desktop live: on this machine, or from another one over SSH to
    `address` (the address other machines reach this one at)."""
    host = f"{getpass.getuser()}@{address}"
    return "\n".join((
        f"Watch it live: VNC on 127.0.0.1:{vnc_port} (this machine only), password in {password_file} (0600).",
        f"  on this machine:       vncviewer -passwd {passwd_file} localhost::{vnc_port}",
        f"  from another machine:  ssh -N -L {vnc_port}:localhost:{vnc_port} {host}",
        f"                         then there: vncviewer localhost::{vnc_port}  (password: `cat {password_file}` here)",
    ))


# --- 3. cloudify ----------------------------------------------------------------------------------

def cloudify_command(app: str) -> list[str]:
    """`cloudify APP`: this virtualenv's console script, else the module."""
    script = Path(sys.executable).with_name("cloudify")
    return [str(script), app] if script.exists() else [sys.executable, "-m", "cloudify.main", app]


def cloudify_env(environ: Mapping[str, str], target: ClusterHandle, stack: desktop_stack.Stack,
                 desktop: VirtualDesktop | None = None) -> dict[str, str]:
    """cloudify's environment: the stack's owner's own KUBECONFIG (not the admin's; the one given
    for a reused cluster), the user and virtual node of the stack just started (unless set), and,
    on a virtual desktop, its DISPLAY/XAUTHORITY and its PulseAudio (found through
    XDG_RUNTIME_DIR, as in a desktop session) with its kod socket."""
    env = dict(environ)
    env["KUBECONFIG"] = str(users.cloudify_kubeconfig(target, stack.settings.user))
    env.setdefault("KOD_CLOUDIFY_USER", stack.settings.user)
    env.setdefault("KOD_CLOUDIFY_VIRTUAL_NODE", stack.node_name)
    return desktop.cloudify_env(env, desktop.pulse_dir) if desktop is not None else env


class Session:
    """A running `cloudify APP`, in a process group of its own so that a Ctrl-C reaches it only
    through us: each SIGINT/SIGTERM we get is forwarded as one SIGINT (cloudify's first cleans
    up, a second says cleanup is under way, a third abandons it, as in a terminal). Should we be
    killed, cloudify gets SIGTERM (PR_SET_PDEATHSIG) and cleans up all the same."""

    def __init__(self, argv: list[str], env: Mapping[str, str]) -> None:
        sys.stdout.flush()
        # SIGTERM (cloudify cleans up as after Ctrl-C) should the demo itself be killed.
        self.proc = subprocess.Popen(argv, env=dict(env), stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=die_with_parent)
        self.interrupted = False
        self.signalled = False
        self._previous: dict[int, Any] = {}

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: remember the interruption and pass one SIGINT on. It prints
        nothing (output may be a pipe whose reader the same Ctrl-C killed: `make demo | tee`);
        what the user is told comes from the code it interrupts."""
        self.interrupted = True
        self.interrupt()

    def interrupt(self) -> None:
        """One SIGINT to cloudify (as Ctrl-C in its terminal)."""
        if self.proc.poll() is None:
            self.signalled = True
            self.proc.send_signal(signal.SIGINT)  # a cloudify gone meanwhile is no error (Popen checks)

    def __enter__(self) -> Session:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._forward)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc.poll() is None:
                if not self.signalled:  # a second SIGINT would only make cloudify say it is cleaning up
                    self.interrupt()
                try:
                    self.proc.wait(timeout=CLEANUP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def end(self) -> int:
        """End the session as Ctrl-C does; cloudify's exit code once it cleaned up."""
        self.interrupt()
        try:
            return self.proc.wait(timeout=CLEANUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SessionFailed(f"cloudify did not end within {CLEANUP_TIMEOUT:.0f} s of Ctrl-C",
                                hint="run `cloudify gc` to remove what it left") from None

    def wait(self) -> int:
        return self.proc.wait()


def rows_changed(before: Image, after: Image) -> int:
    """How many pixel rows differ between two captures of the same box."""
    stride = before.width * 3
    if (before.width, before.height) != (after.width, after.height):
        return after.height
    return sum(before.rgb[y * stride:(y + 1) * stride] != after.rgb[y * stride:(y + 1) * stride]
               for y in range(before.height))


#: A window counts as settled when less than this share of its rows changed in half a second (a
#: blinking text cursor changes a few rows; an app still drawing its first page, many).
SETTLED_ROWS = 0.05


class Screen(Protocol):
    """Where the app's viewer window shows: a virtual desktop, or the user's own display."""

    name: str

    def find(self, pattern: str) -> Window | None:
        """A visible window whose title matches `pattern`."""

    def capture(self, window: Window) -> Image:
        """The window's pixels."""


class VirtualScreen:
    """The virtual desktop: xdotool finds windows, libX11 captures them (with its cookie)."""

    def __init__(self, desktop: VirtualDesktop) -> None:
        self.desktop = desktop
        self.name = desktop.display

    def find(self, pattern: str) -> Window | None:
        return self.desktop.find_window(pattern)

    def capture(self, window: Window) -> Image:
        return self.desktop.capture(window.box)


class UsersScreen:
    """The user's display (its DISPLAY/XAUTHORITY in `env`): xdotool finds windows, ImageMagick's
    `import` captures them (as an 8-bit RGB PNG)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.name = self.env.get("DISPLAY", "")
        self.xdotool = tool("xdotool")
        convert = shutil.which("import")
        if convert is None:
            raise errors.Unavailable("ImageMagick's `import` is not installed (the screenshot needs it)",
                                     hint="apt-get install imagemagick (`python -m localenv up` installs it)")
        self.convert = convert

    def find(self, pattern: str) -> Window | None:
        out = subprocess.run([self.xdotool, "search", "--onlyvisible", "--name", pattern], env=self.env,
                             capture_output=True, text=True, check=False, timeout=30)
        ids = out.stdout.split()
        return Window(int(ids[0]), pattern, Box(0, 0, 0, 0)) if ids else None

    def capture(self, window: Window) -> Image:
        out = subprocess.run([self.convert, "-window", str(window.id), "-depth", "8", "PNG24:-"], env=self.env,
                             capture_output=True, check=True, timeout=60)
        return decode_png(out.stdout)


def show_and_capture(screen: Screen, session: Session, app: str, shot: Path | None, progress: Progress) -> Image:
    """Wait for the app's viewer window and until it is drawn and settled; its pixels then, saved
    as a PNG at `shot` (when given)."""
    pattern = window_title_pattern(app)
    with progress.step(f"{app}'s window on {screen.name}") as step:
        found: list[Window] = []

        def shown() -> bool:
            if not session.running or session.interrupted:
                return True
            window = screen.find(pattern)
            found[:] = [window] if window else []
            return bool(found)

        try:
            wait_for(shown, WINDOW_TIMEOUT, f"a window named /{pattern}/", interval=0.25)
        except TimeoutError:
            raise SessionFailed(f"{app}'s window did not show within {WINDOW_TIMEOUT:.0f} s",
                                hint="see cloudify's messages above; `cloudify sessions` shows the session") from None
        if session.interrupted:
            raise KeyboardInterrupt
        if not session.running:
            code = session.proc.returncode
            raise SessionFailed(f"cloudify ended (exit code {code}) before {app}'s window showed",
                                hint="see cloudify's messages above", exit_code=code)
        window = found[0]
        step.done("shown")
    with progress.step(f"{app} drawn (and settled)" + ("; screenshot" if shot else "")) as step:
        last: list[Image] = []

        def painted() -> bool:
            if not session.running or session.interrupted:
                return True
            image = screen.capture(window)
            settled = bool(last) and rows_changed(last[0], image) < SETTLED_ROWS * image.height
            last[:] = [image]
            return settled and drawn(image)

        try:
            wait_for(painted, DRAWN_TIMEOUT, f"{app} drawn in its window", interval=0.5)
            note = ""
        except TimeoutError:
            note = f" (still not fully drawn after {DRAWN_TIMEOUT:.0f} s)"
        if session.interrupted:
            raise KeyboardInterrupt
        if not session.running:
            raise SessionFailed(f"cloudify ended (exit code {session.proc.returncode}) while {app} was drawn",
                                hint="see cloudify's messages above", exit_code=session.proc.returncode)
        image = last[0] if last else screen.capture(window)
        if shot is not None:
            image.save_png(shot)
        step.done(f"{image.width}x{image.height}" + (f", {shot}" if shot else "") + note)
    return image


# --- the command ----------------------------------------------------------------------------------

def run(settings: LocalEnvSettings, options: DemoOptions, progress: Progress, environ: Mapping[str, str]) -> int:
    """The whole demo (see the module docstring); the exit code."""
    app = apps.APPS.get(options.app)
    if app is None:
        raise errors.InvalidInput(f"unknown app {options.app!r}", hint=f"one of: {', '.join(apps.APPS)}")
    target, stack = prepare(settings, app, progress, environ)
    why = why_not_users_desktop(environ)
    if why is None:
        return on_users_desktop(options, target, stack, progress, environ)
    progress.line(f"==> no desktop here ({why}): the app goes to a virtual one")
    return on_virtual_desktop(settings, options, target, stack, progress, environ)


def on_users_desktop(options: DemoOptions, target: ClusterHandle, stack: desktop_stack.Stack, progress: Progress,
                     environ: Mapping[str, str]) -> int:
    """`cloudify APP` on the user's own screen and speakers; a screenshot only when asked for
    (`--screenshot`, or `--once`, which ends the session once the app is drawn)."""
    argv = cloudify_command(options.app)
    progress.line(f"==> cloudify {options.app} on DISPLAY={environ.get('DISPLAY')} (Ctrl-C ends the session)")
    env = cloudify_env(environ, target, stack)
    screen = UsersScreen(env) if options.once or options.screenshot else None
    with Session(argv, env) as session:
        if screen is not None:
            show_and_capture(screen, session, options.app, options.screenshot, progress)
            if options.once:
                return finish_once(session)
        return session.wait()


def on_virtual_desktop(settings: LocalEnvSettings, options: DemoOptions, target: ClusterHandle,
                       stack: desktop_stack.Stack, progress: Progress, environ: Mapping[str, str]) -> int:
    """`cloudify APP` on a virtual desktop, watched over VNC; a screenshot once the app shows."""
    root = demo_dir(settings)
    shot = options.screenshot or root / f"{options.app}.png"
    with exclusive(root):
        remove_stale_sound_dirs()
        # The kod sound socket must be below KOD_PULSE_DIR (the sidecar's allow-list); a name of
        # its own keeps it apart from a real desktop's socket there.
        desktop = VirtualDesktop(root / "desktop", pulse_dir=KOD_PULSE_DIR / f"{DEMO_SOUND_PREFIX}{secrets.token_hex(4)}")
        try:
            with progress.step("virtual desktop (Xvfb, PulseAudio with null-sink speakers, VNC)") as step:
                desktop.start()
                vnc = desktop.start_vnc()
                step.done(f"DISPLAY={desktop.display}, sound socket {desktop.pulse_socket}, "
                          f"VNC on 127.0.0.1:{vnc.port}, logs in {desktop.root}")
            progress.line(watch_instructions(vnc.port, vnc.password_file, vnc.passwd_file, host.node_ip()))
            argv = cloudify_command(options.app)
            progress.line(f"==> cloudify {options.app} (on DISPLAY={desktop.display}; Ctrl-C ends the session)")
            with Session(argv, cloudify_env(environ, target, stack, desktop)) as session:
                show_and_capture(VirtualScreen(desktop), session, options.app, shot, progress)
                progress.total(f"{options.app} shown and captured")
                if options.once:
                    return finish_once(session)
                progress.line(f"==> the session runs until {options.app} is closed (over VNC) or Ctrl-C")
                return session.wait()
        finally:
            desktop.stop()


def finish_once(session: Session) -> int:
    """--once: end the session as Ctrl-C does; 0 when cloudify cleaned up and exited as asked."""
    code = session.end()
    if code in (0, EXIT_INTERRUPTED):
        return 0
    raise SessionFailed(f"cloudify exited with code {code} when asked to end the session",
                        hint="see its messages above; `cloudify gc` removes what a session left", exit_code=code)

