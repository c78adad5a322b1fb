"""Encryption (-s): VNC and noVNC only through the session's SSH tunnel, and a session key that can
do nothing but the session's forwards."""

from __future__ import annotations

import socket
import subprocess

import pytest

from kod import apps
from tests.e2e.images_support import (  # noqa: F401  (fixtures)
    PAGES_MOUNT, Lab, SessionFiles, built_images, lab, make_session_files, pages, session_files, viewer_window,
    wait_for_content,
)
from tests.fixtures.desktop import Desktop, wait_for

pytestmark = pytest.mark.e2e

GREEN = (18, 171, 52)


def connect(host: str, port: int) -> str:
    """'open' or the reason a TCP connection fails, from the host."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {exc}"


def test_encrypted_session_shows_the_app_and_leaves_vnc_and_novnc_unreachable(
    lab: Lab, desktop: Desktop, session_files: SessionFiles, pages: object,
) -> None:
    app = lab.run_app("firefox", session_files, encrypt=True, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/colour.html"})
    ip = lab.ip(app)
    wait_for(lambda: connect(ip, apps.SSH_PORT) == "open", 60, "the app's sshd")
    # What anyone on the network would try: the VNC and noVNC ports, directly.
    assert connect(ip, apps.VNC_PORT) == "refused"
    assert connect(ip, apps.NOVNC_PORT) == "refused"

    viewer = lab.run_viewer(desktop, session_files, app, encrypt=True)
    window = viewer_window(desktop, "firefox")
    wait_for_content(desktop, window.box, lambda s: s.fraction_near(GREEN) > 0.5, 120, "the page through the tunnel")
    shot = desktop.screenshot("images-firefox-encrypted", region=window.box)
    assert shot.fraction_near(GREEN) > 0.5
    assert f"-L 127.0.0.1:{apps.VNC_PORT}:localhost:{apps.VNC_PORT}" in lab.logs(viewer)
    # Still nothing reachable directly while a viewer is connected.
    assert connect(ip, apps.VNC_PORT) == "refused"
    assert connect(ip, apps.NOVNC_PORT) == "refused"


def ssh_from_viewer(lab: Lab, viewer: object, ip: str, *args: str, key: str = "/run/kod/id",
                    command: tuple[str, ...] = ()) -> tuple[int, str]:
    """Runs ssh in the viewer container with the session's key and pinned host key."""
    return lab.exec(viewer, "ssh", "-F", "/dev/null", "-i", key, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                    "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/run/kod/known_hosts",
                    "-o", f"HostKeyAlias={apps.VIEWER_HOST_KEY_ALIAS}", "-o", "ExitOnForwardFailure=yes",
                    "-p", str(apps.SSH_PORT), "-l", apps.APP_USER, *args, ip, *command)


def test_the_session_key_carries_only_the_session_forwards(
    lab: Lab, desktop: Desktop, session_files: SessionFiles, tmp_path: object,
) -> None:
    # A window-less "app" is enough to talk to sshd.
    app = lab.run_app("app-base", session_files, encrypt=True, command=["sleep", "infinity"])
    viewer = lab.run_viewer(desktop, session_files, app, encrypt=True, sound=False)
    wait_for(lambda: "ssh tunnels up" in lab.logs(viewer), 90, "the viewer's tunnel")
    ip = lab.ip(app)

    code, out = ssh_from_viewer(lab, viewer, ip, "-T", command=("id",))
    assert code != 0 and "only carries port forwards" in out, out
    code, out = ssh_from_viewer(lab, viewer, ip, "-W", f"localhost:{apps.SSH_PORT}")
    assert code != 0 and "administratively prohibited" in out, out
    code, out = ssh_from_viewer(lab, viewer, ip, "-N", "-R", "5555:localhost:22")
    assert code != 0 and "remote port forwarding failed" in out, out

    # Another key than the session's is refused.
    stranger = tmp_path / "stranger"  # type: ignore[operator]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    viewer.put_archive("/tmp", _tar("stranger", stranger.read_bytes()))  # type: ignore[attr-defined]
    lab.exec(viewer, "chmod", "600", "/tmp/stranger")
    code, out = ssh_from_viewer(lab, viewer, ip, "-N", "-L", "7000:localhost:5900", key="/tmp/stranger")
    assert code != 0 and "Permission denied" in out, out


def test_a_viewer_refuses_an_app_whose_host_key_is_not_the_pinned_one(
    lab: Lab, desktop: Desktop, session_files: SessionFiles, tmp_path: object,
) -> None:
    app = lab.run_app("app-base", session_files, encrypt=True, command=["sleep", "infinity"])
    # The viewer pins the host key of another session (a man in the middle would present his own).
    other = make_session_files(tmp_path / "other")  # type: ignore[operator]
    known = session_files.viewer_dir / apps.SECRET_KNOWN_HOSTS
    known.chmod(0o640)
    known.write_text(f"* {other.host_public_key}\n")
    known.chmod(0o440)
    viewer = lab.run_viewer(desktop, session_files, app, encrypt=True, sound=False)
    assert lab.wait_exit(viewer, 90) == apps.VIEWER_EXIT_SSH
    assert "does not match the session's pinned key" in lab.logs(viewer)


def _tar(name: str, data: bytes) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.uid = info.gid = apps.APP_UID
        info.mode = 0o600
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
