"""Attacks on a session's confidentiality and on the components' credentials: the clear mode the
user may ask for (--insecure) still never publishes VNC on a node's address and is said to be
clear, a fake VNC server that asks for no password is refused by the viewer, and every component
refuses a token or credential file that other users can read. Real cluster, Docker, X, PulseAudio.

(The default, encrypted session: tests/e2e/test_cloudify_session.py, test_cloudify_modes.py.)"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kod import apps, labels
from tests.e2e.cloudify_support import (  # noqa: F401 - fixtures
    Cloudify,
    cloudify,
    cloudify_images,
    wait_gone,
)
from tests.e2e.test_cloudify_session import close_firefox, see_firefox

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DOCKER = "/usr/bin/docker"
BIN = Path(sys.executable).parent
#: A VNC server that offers security type None only (no password) and logs what the client chose.
FAKE_VNC = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 5900)); s.listen(4)
print("fake vnc listening", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"RFB 003.008\n")
        if len(c.recv(12)) < 12:
            continue  # a reachability probe: connected, then closed
        c.sendall(bytes([1, 1]))  # one security type: 1 = None
        chosen = c.recv(1)
        print("client chose", "None" if chosen == b"\x01" else repr(chosen), flush=True)
    except OSError as exc:
        print("connection ended:", exc, flush=True)
    finally:
        c.close()
"""


def test_insecure_warns_and_never_publishes_vnc_on_a_node_address(cloudify: Cloudify, desktop: Any) -> None:
    session, window = see_firefox(cloudify, desktop, "insecure", "--insecure")
    assert "WARNING: --insecure: VNC is not carried inside SSH" in session.stderr
    sid, ns = session.session_id, cloudify.namespace
    service = cloudify.kubectl_json("get", "services", "-n", ns, "-l", f"{labels.SESSION}={sid}")["items"][0]
    assert [p["name"] for p in service["spec"]["ports"]] == ["ssh"], "VNC published on the nodes"
    ssh_node_port = service["spec"]["ports"][0]["nodePort"]
    pod = cloudify.kubectl_json("get", "pod", "-n", ns, cloudify.app_pod(sid))
    # Neither on the pod's address (the cluster network) nor on any node address is VNC there.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((pod["status"]["podIP"], apps.VNC_PORT), timeout=5).close()
    for node in cloudify.kubectl_json("get", "nodes")["items"]:
        for address in node["status"].get("addresses", []):
            if address["type"] != "InternalIP":
                continue
            for port in range(30000, 32768):
                if port == ssh_node_port:
                    continue
                with socket.socket() as s:
                    s.settimeout(0.05)
                    if s.connect_ex((address["address"], port)) == 0:
                        try:
                            greeting = s.recv(12)
                        except OSError:  # a server that waits for the client first: not VNC
                            greeting = b""
                        assert not greeting.startswith(b"RFB"), f"VNC answers on {address['address']}:{port}"
    # The viewer says so in the session's log too.
    log = cloudify.kubectl("logs", "-n", ns, f"kod-firefox-{sid}-viewer").stdout
    assert "WARNING: VNC is not carried inside SSH" in log
    assert close_firefox(desktop, window, session) == 0, session.stderr
    assert wait_gone(cloudify, timeout=30) == {}


def test_the_viewer_refuses_a_vnc_server_that_asks_for_no_password(desktop: Any, cloudify_images: Any) -> None:
    fake = subprocess.run([DOCKER, "run", "-d", "--rm", "--entrypoint", "python3", apps.image_ref("firefox"), "-c",
                           FAKE_VNC], capture_output=True, text=True, check=True).stdout.strip()
    viewer = ""
    try:
        ip = subprocess.run([DOCKER, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", fake], capture_output=True,
                            text=True, check=True).stdout.strip()
        env = {apps.ENV_TARGET_HOST: ip, apps.ENV_ENCRYPT: "0", apps.ENV_TARGET_VNC_PORT: "5900",
               apps.ENV_VNC_PASSWORD: "abcd1234", apps.ENV_CONNECT_TIMEOUT: "20", **desktop.container_env()}
        env.pop(apps.ENV_PULSE_SOCKET, None)
        args = [DOCKER, "run", "-d", "--group-add", str(desktop.group)]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        for source, mount in desktop.container_mounts().items():
            args += ["-v", f"{source}:{mount['bind']}:{mount['mode']}"]
        viewer = subprocess.run([*args, apps.VIEWER_IMAGE], capture_output=True, text=True, check=True).stdout.strip()
        try:
            waited = subprocess.run([DOCKER, "wait", viewer], capture_output=True, text=True, timeout=60, check=True)
            code = int(waited.stdout)
        except subprocess.TimeoutExpired:
            code = -1
        log = subprocess.run([DOCKER, "logs", viewer], capture_output=True, text=True, check=True)
        fake_log = subprocess.run([DOCKER, "logs", fake], capture_output=True, text=True, check=True).stdout
    finally:
        for container in (viewer, fake):
            if container:
                subprocess.run([DOCKER, "rm", "-f", container], capture_output=True, check=False)
    assert code == apps.VIEWER_EXIT_AUTH, f"exit {code}:\n{log.stdout}{log.stderr}\nfake server:\n{fake_log}"
    assert "does not use the session's authentication (VncAuth)" in log.stderr
    assert "client chose None" not in fake_log, fake_log  # it never accepted a session without a password


@pytest.mark.parametrize("component", ["interlink", "docker-sidecar", "vk", "cloudify"])
def test_every_component_refuses_a_token_file_others_can_read(component: str, tmp_path: Path) -> None:
    secret = tmp_path / ("kubeconfig" if component == "cloudify" else "token")
    secret.write_text("apiVersion: v1\nkind: Config\nclusters: []\n" if component == "cloudify" else "abc\n")
    secret.chmod(0o644)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    argv = {
        "interlink": [str(BIN / "kod-interlink"), "--port", "0"],
        "docker-sidecar": [str(BIN / "kod-docker-sidecar"), "--port", "0", "--token-file", str(secret),
                           "--docker-url", "unix:///nonexistent.sock"],
        "vk": [str(BIN / "kod-vk")],
        "cloudify": [str(BIN / "cloudify"), "--kubeconfig", str(secret), "--no-fallback", "-r", "native", "-p", "novnc",
                     "firefox"],
    }[component]
    env |= {"interlink": {"KOD_INTERLINK_TOKEN_FILE": str(secret)}, "vk": {"KOD_VK_INTERLINK__TOKEN_FILE": str(secret)}
            }.get(component, {})
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    said = out.stdout + out.stderr
    assert out.returncode != 0, said
    assert "is readable by other users (mode 644)" in said and f"chmod 600 {secret}" in said, said


async def test_the_native_viewer_refuses_a_vnc_server_that_asks_for_no_password(desktop: Any, tmp_path: Path) -> None:
    """cloudify's native mode (the desktop's own vncviewer, as cloudify starts it) against a fake
    server offering security type None on this machine: refused, and said so."""
    import asyncio
    from datetime import UTC, datetime

    from cloudify import credentials
    from cloudify.manifests import SessionPlan, Target
    from cloudify.names import SessionNames
    from cloudify.options import session_options
    from cloudify.settings import CloudifySettings
    from cloudify.viewers.native import NativeViewer
    from kod import errors

    chosen: list[bytes] = []

    async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"RFB 003.008\n")
        await writer.drain()
        try:
            await reader.readexactly(12)
            writer.write(bytes([1, 1]))  # one security type: None
            await writer.drain()
            chosen.append(await asyncio.wait_for(reader.read(1), 10))
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the version probe of cloudify, or a client that hung up
        writer.close()

    server = await asyncio.start_server(fake, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = CloudifySettings(run_mode="native", secure=False)
    options = session_options("firefox", settings, run_mode_given=True)
    plan = SessionPlan(names=SessionNames(session="fakevnc1", app=options.app, user="u", namespace="ns"),
                       options=options, settings=settings, credentials=await credentials.generate("fakevnc1"),
                       now=datetime.now(UTC), desktop_host="here")
    viewer = NativeViewer(plan, ssh="ssh", vncviewer="vncviewer", browser=None, pulse_socket=None,
                          runtime_dir=str(tmp_path), display=desktop.display, timeout=20, env=desktop.env())
    try:
        await viewer.start(Target(host="127.0.0.1", ssh_port=1, vnc_port=port, vnc_host="127.0.0.1"))
        await viewer.wait_running(20)
        with pytest.raises(errors.Forbidden, match="does not use the session's authentication"):
            await asyncio.wait_for(viewer.wait_done(), 30)
    finally:
        await viewer.stop()
        server.close()
    assert b"\x01" not in chosen, "the viewer accepted a session without a password"
