"""The lab of the image benchmarks and tests: the session's secrets, and app + viewer containers
in local Docker on a desktop of the run's own.

The containers are run the way cloudify's docker run mode does it: an app container (the app image
with the session Secret mounted read-only, group-readable as a pod's fsGroup makes it) and a
viewer container on the desktop (the X sockets, a FamilyWild X authority file, the kod PulseAudio
socket's directory, the desktop group as a supplementary group; no privileges, no host network).
Every container carries the label kod.test=images and this run's id, and is removed at the end.

    with desktop_lab("bench-first-frame", only=TEST_IMAGES) as (desktop, lab, root):
        files = make_session_files(root / "session")
        app = lab.run_app("firefox", files, pages=pages_dir(root / "pages"))
        viewer = lab.run_viewer(desktop, files, app)
        window = viewer_window(desktop, "firefox")
        wait_for_content(desktop, window.box, DRAWN["firefox"], 120, "the page")

tests/e2e/images_support.py turns these into pytest fixtures; the image benchmarks use them as
they are. `DRAWN` is the one judgement of "the app has drawn its first screen" that the tests
wait on and the first-frame benchmark times.
"""

from __future__ import annotations

import array
import math
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import wave
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kod import apps
from localenv.virtual_desktop import SAMPLE_RATE, Box, Image, VirtualDesktop, Window

ROOT = Path(__file__).resolve().parents[1]
#: The test pages (colour.html, anim.html, tone.html), kept with the end-to-end tests that use them.
PAGES_SOURCE = ROOT / "tests" / "e2e" / "pages"

LABEL = "kod.test"
LABEL_VALUE = "images"
RUN_LABEL = "kod.test.run"
RUN_ID = uuid.uuid4().hex[:10]
#: The images the tests need (build_all adds app-base, which the apps build FROM).
TEST_IMAGES = ("viewer", "firefox", "libreoffice", "blender")
#: Where the test pages are mounted in the app container.
PAGES_MOUNT = "/kod-test"
#: The app's display size (KOD_GEOMETRY); the viewer's window on the desktop has this size.
GEOMETRY = (1280, 800)

GREEN = (18, 171, 52)               # tests/e2e/pages/colour.html's background
LO_START_CENTER = (102, 102, 102)   # LibreOffice's Start Center backdrop
BLENDER_ORANGE = (244, 152, 46)     # outline of Blender's selected default cube
#: What each app shows at start in the tests (KOD_APP_ARGS), and its own window's title.
APP_ARGS = {"firefox": f"file://{PAGES_MOUNT}/colour.html", "libreoffice": "", "blender": ""}
APP_TITLES = {"firefox": r"kod colour page .* Mozilla Firefox", "libreoffice": r"^LibreOffice$", "blender": r"^Blender"}


def dark_share(img: Image) -> float:
    """Share of pixels darker than 80 on every channel."""
    mv = img.rgb
    return sum(1 for i in range(0, len(mv), 3) if mv[i] < 80 and mv[i + 1] < 80 and mv[i + 2] < 80) / (img.width * img.height)


#: The app has drawn its first screen: cheap checks on a sampled capture of the viewer window.
DRAWN = {
    "firefox": lambda s: s.fraction_near(GREEN) > 0.5,
    "libreoffice": lambda s: s.fraction_near(LO_START_CENTER, 6) > 0.3,
    "blender": lambda s: dark_share(s) > 0.6 and s.distinct_colours() > 50,
}


@dataclass(frozen=True)
class SessionFiles:
    """The session Secret's files, as cloudify makes them: one directory per side."""

    app_dir: Path
    viewer_dir: Path
    password: str
    host_public_key: str


def make_session_files(root: Path, password: str | None = None) -> SessionFiles:
    """Fresh keys (an ed25519 client pair and host pair) and a VNC password, laid out like the
    Secret's mounts: root-owned, mode 0440, group APP_UID (what fsGroup does)."""
    password = password or uuid.uuid4().hex[:8]
    keys = root / "keys"
    keys.mkdir(parents=True)
    for name in ("client", "host"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"kod-test-{name}", "-f", str(keys / name)],
                       check=True)
    host_pub = (keys / "host.pub").read_text().strip()
    app_dir, viewer_dir = root / "app-secret", root / "viewer-secret"
    contents = {
        app_dir: {apps.SECRET_AUTHORIZED_KEYS: (keys / "client.pub").read_text(),
                  apps.SECRET_HOST_KEY: (keys / "host").read_text(),
                  apps.SECRET_VNC_PASSWORD: password},
        viewer_dir: {apps.SECRET_SSH_KEY: (keys / "client").read_text(),
                     apps.SECRET_KNOWN_HOSTS: f"* {host_pub}\n",
                     apps.SECRET_VNC_PASSWORD: password},
    }
    for directory, files in contents.items():
        directory.mkdir()
        for name, text in files.items():
            path = directory / name
            path.write_text(text)
            os.chown(path, 0, apps.APP_UID)
            path.chmod(0o440)
        os.chown(directory, 0, apps.APP_UID)
        directory.chmod(0o750)
    shutil.rmtree(keys)
    return SessionFiles(app_dir, viewer_dir, password, host_pub)


class Lab:
    """Creates the test's containers and removes them at the end."""

    def __init__(self, client: Any, test_name: str) -> None:
        self.client = client
        self.test_name = test_name
        self.containers: list[Any] = []

    def _labels(self, role: str) -> dict[str, str]:
        return {LABEL: LABEL_VALUE, RUN_LABEL: RUN_ID, "kod.test.role": role, "kod.test.name": self.test_name[:60]}

    def run_app(self, app: str, files: SessionFiles, *, encrypt: bool = False, env: dict[str, str] | None = None,
                pages: Path | None = None, command: list[str] | None = None, user: str | None = None) -> Any:
        """Starts the app image `app` (kod/<app>) as cloudify would, with the session Secret."""
        environment = {
            apps.ENV_VNC_PASSWORD_FILE: f"{apps.APP_SECRET_DIR}/{apps.SECRET_VNC_PASSWORD}",
            apps.ENV_AUTHORIZED_KEYS_FILE: f"{apps.APP_SECRET_DIR}/{apps.SECRET_AUTHORIZED_KEYS}",
            apps.ENV_HOST_KEY_FILE: f"{apps.APP_SECRET_DIR}/{apps.SECRET_HOST_KEY}",
            apps.ENV_ENCRYPT: "1" if encrypt else "0",
            apps.ENV_GEOMETRY: f"{GEOMETRY[0]}x{GEOMETRY[1]}",
            apps.ENV_CONNECT_TIMEOUT: "120",
            **(env or {}),
        }
        volumes = {str(files.app_dir): {"bind": apps.APP_SECRET_DIR, "mode": "ro"}}
        if pages is not None:
            volumes[str(pages)] = {"bind": PAGES_MOUNT, "mode": "ro"}
        container = self.client.containers.run(
            apps.image_ref(app), command=command, detach=True, environment=environment, volumes=volumes,
            labels=self._labels("app"), name=f"kod-test-{RUN_ID}-{len(self.containers)}-{app}",
            # A pod's /dev/shm is 64 MiB too: cloudify gives the app an emptyDir (memory) there.
            shm_size="512m", group_add=[str(apps.APP_UID)], user=user,
        )
        self.containers.append(container)
        return container

    def run_viewer(self, desktop: VirtualDesktop, files: SessionFiles, app: Any, *, encrypt: bool = False,
                   sound: bool = True, env: dict[str, str] | None = None) -> Any:
        """Starts the viewer on the test desktop, aimed at `app`'s address on the Docker bridge."""
        environment = {
            apps.ENV_TARGET_HOST: self.ip(app),
            apps.ENV_ENCRYPT: "1" if encrypt else "0",
            apps.ENV_CONNECT_TIMEOUT: "60",
            **desktop.container_env(),
            **(env or {}),
        }
        if not sound:
            environment.pop(apps.ENV_PULSE_SOCKET, None)
        volumes = {str(files.viewer_dir): {"bind": apps.VIEWER_SECRET_DIR, "mode": "ro"}, **desktop.container_mounts()}
        container = self.client.containers.run(
            apps.VIEWER_IMAGE, detach=True, environment=environment, volumes=volumes,
            labels=self._labels("viewer"), name=f"kod-test-{RUN_ID}-{len(self.containers)}-viewer",
            group_add=[str(desktop.group), str(apps.APP_UID)],
        )
        self.containers.append(container)
        return container

    def ip(self, container: Any) -> str:
        container.reload()
        return str(container.attrs["NetworkSettings"]["IPAddress"])

    def wait_exit(self, container: Any, timeout: float) -> int:
        return int(container.wait(timeout=timeout)["StatusCode"])

    def logs(self, container: Any) -> str:
        return container.logs().decode(errors="replace")

    def tx_bytes(self, container: Any) -> int:
        """Bytes the container has sent on its network interface (the kernel's counter)."""
        out = container.exec_run(["cat", "/sys/class/net/eth0/statistics/tx_bytes"])
        return int(out.output.decode().strip())

    def exec(self, container: Any, *argv: str) -> tuple[int, str]:
        out = container.exec_run(list(argv))
        return int(out.exit_code), out.output.decode(errors="replace")

    def app_windows(self, container: Any, name: str) -> list[str]:
        """Names of the visible windows of the app container's own display matching `name`."""
        code, out = self.exec(container, "xdotool", "search", "--onlyvisible", "--name", name, "getwindowname", "%@")
        return [line for line in out.splitlines() if line.strip()] if code == 0 else []

    def cleanup(self) -> None:
        for c in self.containers:
            try:
                c.remove(force=True)
            except Exception:  # already gone
                pass


def viewer_window(desktop: VirtualDesktop, app: str, timeout: float = 90) -> Window:
    """The viewer's window on the desktop: TigerVNC titles it '<VNC desktop name> - TigerVNC'."""
    return desktop.wait_for_window(f"^{app} - TigerVNC$", timeout=timeout)


def sample(img: Image, step: int = 8) -> Image:
    """Every `step`-th pixel of every `step`-th row: enough to judge content, cheap to scan."""
    rows = []
    for y in range(0, img.height, step):
        row = img.rgb[y * img.width * 3:(y + 1) * img.width * 3]
        rows.append(b"".join(row[x * 3:x * 3 + 3] for x in range(0, img.width, step)))
    return Image(len(range(0, img.width, step)), len(rows), b"".join(rows))


def wait_for_content(desktop: VirtualDesktop, box: Box, check: Any, timeout: float, what: str) -> Image:
    """Captures `box` until `check(sampled image)` holds."""
    return desktop.wait_for_content(box, lambda img: bool(check(sample(img))), timeout, what)


def close_through_viewer(desktop: VirtualDesktop, window: Window) -> float:
    """Closes the app as the user would: Alt+F4 typed into the viewer window, which the viewer
    sends to the app's display, where the window manager closes the focused window. Returns the
    moment the keys were sent (time.monotonic())."""
    env = desktop.env()
    subprocess.run(["xdotool", "windowfocus", "--sync", str(window.id)], env=env, check=True, timeout=10)
    subprocess.run(["xdotool", "mousemove", "--window", str(window.id), "400", "300"], env=env, check=True, timeout=10)
    t = time.monotonic()
    subprocess.run(["xdotool", "key", "alt+F4"], env=env, check=True, timeout=10)
    return t


def wait_exits(*containers: Any, timeout: float = 60) -> list[tuple[int, float]]:
    """Waits for the containers at once; returns each one's exit code and the moment
    (time.monotonic()) the engine reported its end."""
    from concurrent.futures import ThreadPoolExecutor

    def one(c: Any) -> tuple[int, float]:
        code = int(c.wait(timeout=timeout)["StatusCode"])
        return code, time.monotonic()

    with ThreadPoolExecutor(len(containers)) as pool:
        return list(pool.map(one, containers))


def sine_wav(path: Path, freq: float, seconds: float, amplitude: float = 0.5, rate: int = SAMPLE_RATE) -> Path:
    """Writes a mono 16-bit WAV of a sine tone (something to play in a container)."""
    frames = array.array("h", (int(amplitude * 32767 * math.sin(2 * math.pi * freq * i / rate))
                               for i in range(int(rate * seconds))))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.tobytes())
    return path


def pages_dir(dest: Path, *, pages: Iterable[str] | None = None,
              tones: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """`dest` made the directory the app container mounts at PAGES_MOUNT: the test pages (`pages`
    by name, default all) and tones to play (file name -> (frequency, seconds)), readable by the
    app container's user. The bind mount shows this directory itself; its parents' modes do not
    matter there."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = set(pages) if pages is not None else None
    for f in sorted(PAGES_SOURCE.iterdir()):
        if wanted is None or f.name in wanted:
            shutil.copy(f, dest / f.name)
    for name, (freq, seconds) in (tones or {}).items():
        sine_wav(dest / name, freq, seconds)
    for f in dest.iterdir():
        f.chmod(0o644)
    dest.chmod(0o755)
    return dest


@contextmanager
def desktop_lab(name: str, only: Iterable[str]) -> Iterator[tuple[VirtualDesktop, Lab, Path]]:
    """The images `only` built (cached), a desktop of the run's own (Xvfb + PulseAudio) and a
    container lab labelled `name`, in a temporary directory (the third value); all of it is
    stopped and removed at the end, also after a failure."""
    import docker

    from localenv import images
    from localenv.progress import Progress

    images.build_all(Progress(quiet=True), only=list(only))
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="kod-bench-") as tmp:
        root = Path(tmp)
        desktop = VirtualDesktop(root / "desktop")
        desktop.start()
        lab = Lab(client, name)
        try:
            yield desktop, lab, root
        finally:
            lab.cleanup()
            desktop.stop()
            client.close()
