"""Helpers of cloudify's end-to-end tests: the images, the environment the CLI runs in, a running
`cloudify` process, and what is left of a session in the cluster and in Docker.

The CLI runs as a real subprocess (`.venv/bin/cloudify`), against the test cluster, the test
desktop (Xvfb with a cookie, PulseAudio with a null sink) and the real virtual node, as the user
runs it: with the user's own kubeconfig (user A of the local cluster, not the admin's) and in the
user's own namespace (kod-<user>, the only one the virtual node runs pods of). Tests run one at
a time and each ends its sessions, so what a test finds left over there is its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kod import labels
from localenv.virtual_desktop import drawn

REPO = Path(__file__).resolve().parents[2]
CLOUDIFY = [sys.executable, "-m", "cloudify.main"]
APP_IMAGES = ("kod/firefox:0.1.0", "kod/viewer:0.1.0")
#: The viewer window's title: the VNC desktop name (the app) and the viewer's name.
FIREFOX_WINDOW = r"^firefox - TigerVNC"
#: Firefox is drawn in the viewer window (not the viewer's black framebuffer with its F8 hint):
#: the one "drawn" judgement, shared with the demo and bench/cloudify_first_frame.py.
firefox_drawn = drawn


def ensure_images(cluster: Any) -> None:
    """The app and viewer images, built by the images' own builder (skipped when up to date)
    and imported into the cluster (skipped when it has them)."""
    from localenv import images
    from localenv.progress import Progress

    images.build_all(Progress(quiet=True), only=[ref.split("/", 1)[1].split(":", 1)[0] for ref in APP_IMAGES])
    cluster.import_images(list(APP_IMAGES))
    # cloudify checks a node reports the app's image; the kubelet reports a new one a moment later.
    cluster.wait_images_reported(APP_IMAGES)


def interrupt_all(procs: list[subprocess.Popen[str]]) -> None:
    """Ctrl-C to every cloudify still running, then a minute for each to clean up (else kill)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Cloudify:
    """How the tests run `cloudify`: its environment, and the places it writes to."""

    env: dict[str, str]
    namespace: str
    user: str
    state_dir: Path
    kubectl: Any
    pulse_dir: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    #: The namespace's volumes when the test began (the user's own, kept).
    pvcs_before: frozenset[str] = frozenset()

    def run(self, *args: str, timeout: float = 120, check: bool = False, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a cloudify command to its end."""
        out = subprocess.run([*CLOUDIFY, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                             timeout=timeout, check=False, input=stdin, cwd=REPO)
        if check and out.returncode != 0:
            raise AssertionError(f"cloudify {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def start(self, *args: str, env: dict[str, str] | None = None) -> Session:
        """Start `cloudify ARGS` in the background (a session)."""
        log = self.state_dir.parent / f"cloudify-{uuid.uuid4().hex[:6]}"
        out, err = open(f"{log}.out", "w+"), open(f"{log}.err", "w+")
        proc = subprocess.Popen([*CLOUDIFY, *args], env={**self.env, **(env or {})}, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, text=True, cwd=REPO)
        self.procs.append(proc)
        return Session(proc, Path(f"{log}.out"), Path(f"{log}.err"))

    def sessions(self) -> list[dict[str, Any]]:
        return json.loads(self.run("sessions", "--json", check=True).stdout)

    def leftovers(self) -> dict[str, list[str]]:
        """What of cloudify's sessions is in the namespace (all but PVCs), and cloudify's or the
        sidecar's containers of this namespace in Docker."""
        found: dict[str, list[str]] = {}
        for kind in ("jobs", "pods", "services", "secrets"):
            items = self.kubectl_json("get", kind, "-n", self.namespace, "-l", labels.SESSION)["items"]
            if items:
                found[kind] = [i["metadata"]["name"] for i in items]
        # The sidecar's containers of this namespace's pods, and cloudify's own viewers (-r docker).
        containers = docker_containers(f"{labels.D_POD_NAMESPACE}={self.namespace}")
        containers += docker_containers(f"{labels.D_MANAGED_BY}=cloudify")
        if containers:
            found["containers"] = containers
        return found

    def pvcs(self) -> list[str]:
        """The volumes this test made in the namespace (not those the user had before)."""
        return [i["metadata"]["name"] for i in self.kubectl_json("get", "pvc", "-n", self.namespace)["items"]
                if i["metadata"]["name"] not in self.pvcs_before]

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def app_pod(self, session: str | None = None) -> str:
        """Name of the (only, or the session's) app pod in the namespace."""
        sel = f"{labels.ROLE}=app" + (f",{labels.SESSION}={session}" if session else "")
        items = self.kubectl_json("get", "pods", "-n", self.namespace, "-l", sel)["items"]
        assert len(items) == 1, [i["metadata"]["name"] for i in items]
        return str(items[0]["metadata"]["name"])

    def exec_app(self, pod: str, script: str) -> str:
        return str(self.kubectl("exec", "-n", self.namespace, pod, "-c", "app", "--", "sh", "-c", script).stdout)

    def stop_all(self) -> None:
        """End what a failed test left running (Ctrl-C: cloudify cleans up as a user's would)."""
        interrupt_all(self.procs)
        self.run("gc", timeout=120)


def docker_containers(label: str) -> list[str]:
    out = subprocess.run(["/usr/bin/docker", "ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=False)
    return out.stdout.split()


@dataclass
class Session:
    """A running `cloudify` process."""

    proc: subprocess.Popen[str]
    out_path: Path
    err_path: Path

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    @property
    def session_id(self) -> str:
        for line in self.stderr.splitlines():
            if "(session " in line:
                return line.split("(session ", 1)[1].split(",")[0].split(")")[0]
        raise AssertionError(f"no session id in cloudify's output:\n{self.stderr}")

    def wait_line(self, text: str, timeout: float = 90) -> str:
        """Wait until cloudify printed a line containing `text` (stdout or stderr)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in (self.stdout + self.stderr).splitlines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"cloudify ended ({self.proc.returncode}) before printing {text!r}:\n{self.stderr}")
            time.sleep(0.1)
        raise AssertionError(f"cloudify did not print {text!r} within {timeout} s:\n{self.stderr}")

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"cloudify did not end within {timeout} s:\n{self.stderr}") from None


def xdotool(desktop: Any, *args: str) -> str:
    return subprocess.run([shutil.which("xdotool") or "xdotool", *args], env=desktop.env(), capture_output=True,
                          text=True, check=True, timeout=30).stdout


def keys(desktop: Any, window: int, *combos: str, pause: float = 0.4) -> None:
    """Type key combinations into a window of the desktop, as the user would."""
    xdotool(desktop, "windowfocus", "--sync", str(window))
    for combo in combos:
        xdotool(desktop, "key", "--clearmodifiers", combo)
        time.sleep(pause)


def type_text(desktop: Any, window: int, text: str) -> None:
    """Type `text` into a window; a final newline is pressed as Return."""
    xdotool(desktop, "windowfocus", "--sync", str(window))
    xdotool(desktop, "type", "--delay", "40", text.rstrip("\n"))
    if text.endswith("\n"):
        time.sleep(0.2)
        xdotool(desktop, "key", "Return")


def wait_gone(cloudify: Any, timeout: float = 60) -> dict[str, list[str]]:
    """Wait until nothing of the namespace's sessions is left; what is left at the timeout
    (`cloudify`: anything with `leftovers()`, a Cloudify or the home proving ground's)."""
    deadline = time.monotonic() + timeout
    left = cloudify.leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = cloudify.leftovers()
    return left


@pytest.fixture(scope="session")
def cloudify_images(cluster: Any, docker_engine: Any) -> tuple[str, ...]:
    ensure_images(cluster)
    return APP_IMAGES


@contextmanager
def cloudify_for(cluster: Any, virtual_node: Any, desktop: Any, user_a: Any, tmp_path: Path) -> Iterator[Cloudify]:
    """cloudify's environment: the virtual node's user (A) with A's own kubeconfig and namespace
    (cloudify's defaults), the test desktop, private config/state directories under `tmp_path`
    and a kod sound socket directory of its own (under /run/kod/pulse, which the Docker sidecar
    allows). Afterwards its sessions are ended and the volumes it made deleted."""
    node = virtual_node.node()
    user = node["metadata"]["labels"][labels.DESKTOP_OF]
    assert user == user_a.name and user_a.kubeconfig is not None
    namespace = user_a.namespace
    state = tmp_path / "state"
    pulse_dir = Path("/run/kod/pulse") / f"test-{uuid.uuid4().hex[:8]}"
    env = desktop.cloudify_env({k: v for k, v in os.environ.items() if not k.startswith("KOD_CLOUDIFY_")}, pulse_dir)
    env.update({
        "KUBECONFIG": str(user_a.kubeconfig),
        "XDG_STATE_HOME": str(state),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "KOD_CLOUDIFY_USER": user,
        "KOD_CLOUDIFY_BROWSER": "true",  # the tests open noVNC URLs themselves
        # This machine's own Firefox (installed for the home proving ground's fallback) is not the
        # app under test: no local fallback unless a test names a local command itself.
        "KOD_CLOUDIFY_LOCAL_COMMANDS": '{"firefox": ["kod-no-local-firefox"]}',
        "PYTHONPATH": str(REPO),
    })
    c = Cloudify(env=env, namespace=namespace, user=user, state_dir=state, kubectl=cluster.kubectl,
                 pulse_dir=pulse_dir)
    c.pvcs_before = frozenset(c.pvcs())
    try:
        yield c
    finally:
        c.stop_all()
        for pvc in c.pvcs():
            cluster.kubectl("delete", "pvc", "-n", namespace, pvc, "--wait=false", check=False)
        shutil.rmtree(pulse_dir, ignore_errors=True)
        for name in docker_containers(f"{labels.D_MANAGED_BY}=cloudify"):
            subprocess.run(["/usr/bin/docker", "rm", "-f", name], capture_output=True, check=False)


@pytest.fixture
def cloudify(cluster: Any, virtual_node: Any, desktop: Any, cloudify_images: Any, user_a: Any,
             tmp_path: Path) -> Iterator[Cloudify]:
    """cloudify's environment for one test (`cloudify_for`)."""
    with cloudify_for(cluster, virtual_node, desktop, user_a, tmp_path) as c:
        yield c
