"""noVNC: the app in a web browser (headless Chromium), with the session's token in the URL's
fragment (never sent to the server, so never in its logs)."""

from __future__ import annotations

import pytest

from kod import apps
from tests.e2e.images_support import (  # noqa: F401  (fixtures)
    PAGES_MOUNT, Lab, SessionFiles, built_images, lab, pages, session_files,
)
from tests.fixtures.desktop import Box, BrowserPage, Desktop

pytestmark = pytest.mark.e2e

GREEN = (18, 171, 52)
#: noVNC's state: 'connected', 'error: <its status text>', or '' while it connects.
NOVNC_STATE = """(() => {
  const status = document.getElementById('noVNC_status');
  if (status && status.classList.contains('noVNC_status_error')) return 'error: ' + status.textContent;
  return document.documentElement.classList.contains('noVNC_connected') ? 'connected' : '';
})()"""
#: The middle of the page, where the app's green shows once noVNC has drawn it.
MIDDLE = Box(560, 360, 160, 80)


def novnc_url(ip: str, token: str) -> str:
    return f"http://{ip}:{apps.NOVNC_PORT}/vnc.html?autoconnect=1&resize=remote#password={token}"


def drawn_or_failed(page: BrowserPage) -> object:
    state = page.evaluate(NOVNC_STATE)
    if state == "connected":
        return "drawn" if page.screenshot(clip=MIDDLE).fraction_near(GREEN) > 0.9 else ""
    return state


def test_novnc_in_a_browser_shows_the_app(lab: Lab, desktop: Desktop, session_files: SessionFiles,
                                          pages: object) -> None:
    app = lab.run_app("firefox", session_files, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/colour.html"})
    with desktop.browser(novnc_url(lab.ip(app), session_files.password)) as page:
        state = page.wait_until(drawn_or_failed, 120, "noVNC to show the app (or fail)")
        shot = page.screenshot("images-novnc")
    assert state == "drawn", f"noVNC did not show the app: {state!r}; see {shot.path}"
    assert shot.fraction_near(GREEN) > 0.5, f"the app's page does not fill the browser; see {shot.path}"
    # The token travelled in the fragment: websockify's request log does not hold it.
    assert session_files.password not in lab.logs(app)


def test_novnc_with_a_wrong_token_says_so_and_shows_nothing(lab: Lab, desktop: Desktop,
                                                            session_files: SessionFiles, pages: object) -> None:
    app = lab.run_app("firefox", session_files, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/colour.html"})
    with desktop.browser(novnc_url(lab.ip(app), "wrong-token")) as page:
        state = page.wait_until(drawn_or_failed, 120, "noVNC to fail")
        shot = page.screenshot("images-novnc-wrong-token")
    assert isinstance(state, str) and state.startswith("error:") and "Authentication failure" in state, state
    assert shot.fraction_near(GREEN) < 0.01
