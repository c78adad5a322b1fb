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

    def join(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


def session_leftovers(cluster: Any, namespace: str) -> dict[str, list[str]]:
    """Pods, services and secrets of cloudify sessions in `namespace`; the sidecar's containers of
    its pods and cloudify's own viewer containers in Docker."""
    found: dict[str, list[str]] = {}
    for kind in ("pods", "services", "secrets"):
        items = cluster.kubectl_json("get", kind, "-n", namespace, "-l", labels.SESSION)["items"]
        if items:
            found[kind] = [i["metadata"]["name"] for i in items]
    containers = docker_containers(f"{labels.D_POD_NAMESPACE}={namespace}")
    containers += docker_containers(f"{labels.D_MANAGED_BY}=cloudify")
    if containers:
        found["containers"] = containers
    return found


def test_demo_without_a_desktop_shows_firefox_on_a_virtual_one_and_leaves_nothing(
        cluster: Any, virtual_node: Any, kube_namespace: str, tmp_path: Path) -> None:
    shot = tmp_path / "firefox.png"
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "XAUTHORITY", "PULSE_SERVER") and not k.startswith("KOD_CLOUDIFY_")}
    env.update({
        "KUBECONFIG": str(cluster.kubeconfig),
        "KOD_CLOUDIFY_NAMESPACE": kube_namespace,   # what is left is this test's own
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "PYTHONUNBUFFERED": "1",
    })
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "localenv", "demo", "firefox", "--once", "--screenshot", str(shot)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    try:
        code = proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
        pytest.fail(f"the demo did not end within 900 s:\n{output.join()}")
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
    # Nothing of the session is left: in the cluster, in Docker, the virtual desktop and its VNC server.
    deadline = time.monotonic() + 60
    left = session_leftovers(cluster, kube_namespace)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = session_leftovers(cluster, kube_namespace)
    assert left == {}, left
    assert vnc_banner("127.0.0.1", output.vnc_port) == b"", "the VNC server still runs"
    sound_socket = re.search(r"sound socket (\S+?),", text)
    assert sound_socket, text
    assert not Path(sound_socket.group(1)).parent.exists(), "the virtual desktop's sound socket directory is left"
