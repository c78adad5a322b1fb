"""`make demo` on a machine without a desktop: `python -m localenv demo firefox --once` sets
everything up, shows Firefox from a cluster pod on a virtual desktop that can be watched over VNC,
saves a screenshot of it, ends the session, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kod import labels
from localenv import host
from localenv.virtual_desktop import Box, Image, decode_png
from tests.e2e.cloudify_support import REPO, docker_containers, firefox_drawn

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / ".artifacts" / "screenshots"
#: Firefox's tab strip (the image's default theme).
TAB_STRIP = (235, 235, 237)


def shows_firefox(img: Image) -> bool:
    """Firefox drawn in the viewer window: hundreds of colours (firefox_drawn), not the viewer's
    black framebuffer (whose "Press F8" hint alone has ~200 colours), and Firefox's light grey tab
    strip across the top."""
    top = img.crop(Box(0, 0, img.width, 40))
    return firefox_drawn(img) and img.fraction_near((0, 0, 0), 16) < 0.5 and top.fraction_near(TAB_STRIP, 8) > 0.5


def vnc_banner(address: str, port: int) -> bytes:
    """The first bytes a VNC server sends (its protocol version), or b"" when nothing answers."""
    try:
        with socket.create_connection((address, port), timeout=5) as s:
            s.settimeout(5)
            return s.recv(12)
    except OSError:
        return b""


class Output:
    """The demo's output, read as it comes; the VNC port it names is probed the moment it is printed."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.vnc_port = 0
        self.banner = b""
        self.banner_elsewhere = b""
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)
            sys.stdout.write(line)
            found = re.search(r"VNC on 127\.0\.0\.1:(\d+)", line)
            if found and not self.vnc_port:
                self.vnc_port = int(found.group(1))
                self.banner = vnc_banner("127.0.0.1", self.vnc_port)
                self.banner_elsewhere = vnc_banner(host.node_ip(), self.vnc_port)

    @property
    def so_far(self) -> str:
        return "".join(self.lines)

    def join(self) -> str:
        """All of it, once the demo ended."""
        self._thread.join(timeout=30)
        return self.so_far


def session_leftovers(cluster: Any, namespace: str, session: str) -> dict[str, list[str]]:
    """Pods, services and secrets of cloudify sessions in `namespace`; the sidecar's containers of
    its pods and cloudify's own viewer containers of `session` in Docker (not other tests')."""
    found: dict[str, list[str]] = {}
    for kind in ("pods", "services", "secrets"):
        items = cluster.kubectl_json("get", kind, "-n", namespace, "-l", labels.SESSION)["items"]
        if items:
            found[kind] = [i["metadata"]["name"] for i in items]
    containers = docker_containers(f"{labels.D_POD_NAMESPACE}={namespace}")
    containers += docker_containers(f"{labels.D_SESSION}={session}")
    if containers:
        found["containers"] = containers
    return found


def demo_env(cluster: Any, namespace: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a headless machine (no DISPLAY). `namespace` is the user's own (what
    cloudify uses anyway), said explicitly so that the test finds its cloudify processes."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "XAUTHORITY", "PULSE_SERVER") and not k.startswith("KOD_CLOUDIFY_")}
    env.update({
        "KUBECONFIG": str(cluster.kubeconfig),
        "KOD_CLOUDIFY_NAMESPACE": namespace,
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def start_demo(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], Output]:
    proc = subprocess.Popen([sys.executable, "-m", "localenv", "demo", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, Output(proc)


def wait_end(proc: subprocess.Popen[str], output: Output, timeout: float = 900) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
        pytest.fail(f"the demo did not end within {timeout:.0f} s:\n{output.join()}")


def cloudify_processes(namespace: str) -> list[int]:
    """PIDs of cloudify processes of `namespace` (by their environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"cloudify" in cmdline and f"KOD_CLOUDIFY_NAMESPACE={namespace}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def assert_nothing_left(cluster: Any, namespace: str, vnc_port: int, text: str) -> None:
    """Nothing of the session (its id and display read from the demo's output `text`): in the
    cluster, in Docker, cloudify, the virtual desktop and its VNC server (on `vnc_port`)."""
    session = re.search(r"\(session (\w+),", text)
    assert session, text
    deadline = time.monotonic() + 60
    left = session_leftovers(cluster, namespace, session.group(1))
    while (left or cloudify_processes(namespace)) and time.monotonic() < deadline:
        time.sleep(0.5)
        left = session_leftovers(cluster, namespace, session.group(1))
    assert left == {}, left
    assert cloudify_processes(namespace) == []
    assert vnc_banner("127.0.0.1", vnc_port) == b"", "the VNC server still runs"
    display = re.search(r"DISPLAY=:(\d+),", text)
    assert display, text
    assert not Path(f"/tmp/.X11-unix/X{display.group(1)}").exists(), "the virtual display still runs"


def firefox_near_the_top(img: Image) -> bool:
    """A 1280x800 Firefox viewer window at the left, starting in the top 120 rows (where the
    watching viewer shows the virtual desktop's top left corner)."""
    for y in range(0, min(120, img.height - 800)):
        if img.crop(Box(0, y, 1280, 1)).fraction_near(TAB_STRIP, 8) > 0.5:
            return shows_firefox(img.crop(Box(0, y, 1280, 800)))
    return False


def watch_as_printed(desktop: Any, text: str) -> None:
    """Run the `vncviewer -passwd ...` command the demo printed on the test desktop (another
    person's screen, say) and check that it shows Firefox's viewer window, at the top left of the
    virtual desktop; then close it."""
    found = re.search(r"on this machine:\s+(vncviewer -passwd \S+ localhost::\d+)", text)
    assert found, text
    viewer = subprocess.Popen(found.group(1).split(), env=desktop.env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        window = desktop.wait_for_window(r"@.* - TigerVNC$", timeout=30)
        try:
            desktop.wait_for_content(window.box, firefox_near_the_top, timeout=30,
                                     what="Firefox in the watching vncviewer")
        finally:
            desktop.screenshot("demo-watched-over-vnc", region=window.box)
    finally:
        viewer.terminate()
        viewer.wait(timeout=10)


@pytest.mark.timeout(1200)  # the demo may build images and start everything: wait_end allows it 900 s
def test_demo_without_a_desktop_shows_firefox_on_a_virtual_one_and_leaves_nothing(
        cluster: Any, virtual_node: Any, user_a: Any, tmp_path: Path) -> None:
    namespace = user_a.namespace  # the demo's cloudify runs as user A, in A's namespace
    shot = tmp_path / "firefox.png"
    started = time.monotonic()
    proc, output = start_demo(demo_env(cluster, namespace, tmp_path), "firefox", "--once", "--screenshot", str(shot))
    code = wait_end(proc, output)
    text = output.join()
    print(f"demo: {time.monotonic() - started:.1f} s")

    assert code == 0, text
    # How to watch it was printed, and the port it named was a VNC server, on 127.0.0.1 only.
    assert output.vnc_port, text
    assert "vncviewer -passwd " in text and f"localhost::{output.vnc_port}" in text, text
    assert f"ssh -N -L {output.vnc_port}:localhost:{output.vnc_port}" in text, text
    assert output.banner.startswith(b"RFB 003."), output.banner
    assert output.banner_elsewhere == b"", "the VNC server answers on the host's network address"
    # The screenshot shows Firefox (its path was printed).
    assert str(shot) in text, text
    image = decode_png(shot.read_bytes())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "demo-firefox.png")
    assert shows_firefox(image), (f"{image.width}x{image.height}, {image.distinct_colours()} colours, "
                                  f"{image.fraction_near((0, 0, 0), 16):.0%} black: see {ARTIFACTS / 'demo-firefox.png'}")
    assert_nothing_left(cluster, namespace, output.vnc_port, text)
    sound_socket = re.search(r"sound socket (\S+?),", text)
    assert sound_socket, text
    assert not Path(sound_socket.group(1)).parent.exists(), "the virtual desktop's sound socket directory is left"


@pytest.mark.parametrize(("sig", "exit_code"), [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)],
                         ids=["ctrl-c", "kill-9"])
def test_ending_the_demo_ends_the_session_and_leaves_nothing(
        cluster: Any, virtual_node: Any, desktop: Any, user_a: Any, tmp_path: Path, sig: int,
        exit_code: int) -> None:
    """Meanwhile someone watches it with the vncviewer command it printed, and sees Firefox.
    Ctrl-C reaches cloudify, which cleans up (exit 130, as cloudify's). A SIGKILL of the demo
    leaves nothing either: cloudify gets SIGTERM (PR_SET_PDEATHSIG), and the virtual display it
    shows on dies with the demo, which ends its viewer too. (The sound socket's directory of a
    killed demo is removed by the next one.)"""
    namespace = user_a.namespace
    proc, output = start_demo(demo_env(cluster, namespace, tmp_path), "firefox",
                              "--screenshot", str(tmp_path / "firefox.png"))
    try:
        watch_and_end(proc, output, desktop, namespace, sig)
    finally:
        if proc.poll() is None:  # the test failed midway: end the demo as its user would
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=180)
    text = output.join()
    assert proc.returncode == exit_code, text
    assert_nothing_left(cluster, namespace, output.vnc_port, text)
    sound_socket = re.search(r"sound socket (\S+?),", text)
    assert sound_socket, text
    if sig == signal.SIGKILL:  # what the next demo would remove
        shutil.rmtree(Path(sound_socket.group(1)).parent, ignore_errors=True)
    else:
        assert not Path(sound_socket.group(1)).parent.exists(), "the virtual desktop's sound socket directory is left"


def watch_and_end(proc: subprocess.Popen[str], output: Output, desktop: Any, namespace: str, sig: int) -> None:
    """Once the session runs: watch it over VNC (for Ctrl-C), then send `sig` to the demo and
    wait for its end."""
    deadline = time.monotonic() + 600
    while "the session runs until" not in output.so_far:
        assert proc.poll() is None, output.join()
        assert time.monotonic() < deadline, output.so_far
        time.sleep(0.2)
    assert cloudify_processes(namespace), "no cloudify runs during the session"
    if sig == signal.SIGINT:
        watch_as_printed(desktop, output.so_far)
    proc.send_signal(sig)
    wait_end(proc, output, timeout=180)


#: Seconds the demo may take to end after Ctrl-C: cloudify removes the session (its pods are gone
#: in a few seconds) and the virtual desktop stops.
CTRL_C_ENDS_WITHIN = 90.0


def test_ctrl_c_of_the_demo_piped_into_tee_ends_the_session_at_once_and_leaves_nothing(
        cluster: Any, virtual_node: Any, user_a: Any, tmp_path: Path) -> None:
    """`make demo 2>&1 | tee log`, then Ctrl-C. The terminal's SIGINT reaches the whole pipeline
    and tee dies of it at once, so from then on every message of the demo and of cloudify goes
    into a pipe without a reader. The first Ctrl-C still ends the session: cloudify cleans up,
    the demo exits 130, nothing is left. (It used to take three: cloudify's signal handler failed
    on its broken stderr before it cancelled anything.)"""
    namespace = user_a.namespace  # the demo's cloudify runs as user A, in A's namespace
    log = tmp_path / "log"
    demo = subprocess.Popen([sys.executable, "-m", "localenv", "demo", "firefox", "--screenshot", str(tmp_path / "firefox.png")],
                            env=demo_env(cluster, namespace, tmp_path), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, process_group=0)
    assert demo.stdout is not None
    tee = subprocess.Popen(["tee", str(log)], stdin=demo.stdout, stdout=subprocess.DEVNULL, process_group=demo.pid)
    demo.stdout.close()  # tee is the pipe's only reader

    def logged() -> str:
        return log.read_text() if log.exists() else ""  # tee creates it when it starts

    try:
        deadline = time.monotonic() + 600
        while "the session runs until" not in logged():
            assert demo.poll() is None, logged()
            assert time.monotonic() < deadline, logged()
            time.sleep(0.2)
        assert cloudify_processes(namespace), "no cloudify runs during the session"
        # Ctrl-C. tee goes first (its default action), so every write after it fails with EPIPE.
        tee.send_signal(signal.SIGINT)
        assert tee.wait(timeout=10) == -signal.SIGINT
        os.killpg(demo.pid, signal.SIGINT)
        try:
            code = demo.wait(timeout=CTRL_C_ENDS_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo still runs {CTRL_C_ENDS_WITHIN:.0f} s after one Ctrl-C with its output pipe broken")
        assert code == 130, logged()
    finally:
        for _ in range(3):  # the test failed midway: Ctrl-C until it ends, as its user would
            if demo.poll() is not None:
                break
            os.killpg(demo.pid, signal.SIGINT)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=30)
        if tee.poll() is None:
            tee.kill()
            tee.wait(timeout=10)
    text = logged()
    port = re.search(r"VNC on 127\.0\.0\.1:(\d+)", text)
    assert port, text
    assert_nothing_left(cluster, namespace, int(port.group(1)), text)
    sound_socket = re.search(r"sound socket (\S+?),", text)
    assert sound_socket, text
    assert not Path(sound_socket.group(1)).parent.exists(), "the virtual desktop's sound socket directory is left"
