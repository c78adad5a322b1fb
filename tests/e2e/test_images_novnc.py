"""noVNC: the app in a web browser (headless Chromium), with the session's token in the URL's
fragment (never sent to the server, so never in its logs)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kod import apps
from tests.e2e.images_support import (  # noqa: F401  (fixtures)
    PAGES_MOUNT, Lab, SessionFiles, built_images, lab, pages, session_files,
)
from tests.fixtures.desktop import Box, BrowserPage, Desktop

pytestmark = pytest.mark.e2e

GREEN = (18, 171, 52)
#: noVNC's state: 'connected', 'error: <its status text>', or '' while it connects (or after it failed).
NOVNC_STATE = """(() => {
  const status = document.getElementById('noVNC_status');
  if (status && status.classList.contains('noVNC_status_error')) return 'error: ' + status.textContent;
  return document.documentElement.classList.contains('noVNC_connected') ? 'connected' : '';
})()"""
#: The middle of the page, where the app's green shows once noVNC has drawn it.
MIDDLE = Box(560, 360, 160, 80)


def novnc_url(ip: str, token: str, port: int = apps.NOVNC_PORT) -> str:
    return f"http://{ip}:{port}/vnc.html?autoconnect=1&resize=remote#password={token}"


@contextmanager
def ssh_tunnel(ip: str, files: SessionFiles, tmp_path: object) -> Iterator[int]:
    """noVNC as the session has it by default (encrypted): websockify on the app's localhost only,
    reached with `ssh -L` and the session's key, the app's host key pinned. Yields the local port."""
    root = files.viewer_dir.parent
    known = root / "novnc-known-hosts"
    known.write_text(f"[{ip}]:{apps.SSH_PORT} {files.host_public_key}\n")
    # The viewer's copy of the client key (the Secret's mount is 0440: ssh wants its key private).
    key = root / "novnc-client-key"
    key.write_bytes((files.viewer_dir / apps.SECRET_SSH_KEY).read_bytes())
    key.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["ssh", "-F", "/dev/null", "-N", "-p", str(apps.SSH_PORT), "-i", str(key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=5",
            "-L", f"127.0.0.1:{port}:localhost:{apps.NOVNC_PORT}", f"{apps.APP_USER}@{ip}"]
    proc: subprocess.Popen[bytes] | None = None
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc is None or proc.poll() is not None:
                assert time.monotonic() < deadline, "the session's SSH tunnel to noVNC did not come up"
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        yield port
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


def failure(page: BrowserPage) -> str | None:
    """noVNC's own report of a failed connection (its status bar shows it only for a moment)."""
    return next((line for line in page.console if "Failed when connecting" in line), None)


def drawn_or_failed(page: BrowserPage) -> object:
    if page.evaluate(NOVNC_STATE) == "connected":
        return "drawn" if page.screenshot(clip=MIDDLE).fraction_near(GREEN) > 0.9 else ""
    return failure(page)


def wait_for_novnc(page: BrowserPage, lab: Lab, app: object, name: str, what: str) -> tuple[object, object]:
    """Waits until noVNC shows the app or fails; the screenshot is saved either way, and a
    timeout reports what noVNC and the app's servers were doing."""
    try:
        state = page.wait_until(drawn_or_failed, 120, what)
    except TimeoutError as exc:
        shot = page.screenshot(name)
        raise AssertionError(f"{exc}; noVNC state {page.evaluate(NOVNC_STATE)!r}; see {shot.path}; app log:\n"
                             + lab.logs(app)[-2500:]) from None
    return state, page.screenshot(name)


def test_novnc_in_a_browser_shows_the_app(lab: Lab, desktop: Desktop, session_files: SessionFiles,
                                          pages: object) -> None:
    app = lab.run_app("firefox", session_files, encrypt=True, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/colour.html"})
    # Encrypted (the default): websockify is not on the app's address, only inside SSH.
    with socket.socket() as s:
        s.settimeout(5)
        assert s.connect_ex((lab.ip(app), apps.NOVNC_PORT)) != 0, "noVNC answers outside the SSH tunnel"
    with ssh_tunnel(lab.ip(app), session_files, None) as port, \
            desktop.browser(novnc_url("127.0.0.1", session_files.password, port)) as page:
        state, shot = wait_for_novnc(page, lab, app, "images-novnc", "noVNC to show the app (or fail)")
    assert state == "drawn", f"noVNC did not show the app: {state!r}; see {shot.path}"
    assert shot.fraction_near(GREEN) > 0.5, f"the app's page does not fill the browser; see {shot.path}"
    # The token travelled in the fragment: websockify's request log does not hold it.
    assert session_files.password not in lab.logs(app)


def test_novnc_with_a_wrong_token_says_so_and_shows_nothing(lab: Lab, desktop: Desktop,
                                                            session_files: SessionFiles, pages: object) -> None:
    app = lab.run_app("firefox", session_files, encrypt=True, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/colour.html"})
    with ssh_tunnel(lab.ip(app), session_files, None) as port, \
            desktop.browser(novnc_url("127.0.0.1", "wrong-token", port)) as page:
        state, shot = wait_for_novnc(page, lab, app, "images-novnc-wrong-token", "noVNC to fail")
    assert isinstance(state, str) and "Authentication failure" in state, state
    assert shot.fraction_near(GREEN) < 0.01
