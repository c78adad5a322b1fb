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
#: noVNC's state: 'connected', 'error: <its status text>', or '' while it connects (or after it failed).
NOVNC_STATE = """(() => {
  const status = document.getElementById('noVNC_status');
  if (status && status.classList.contains('noVNC_status_error')) return 'error: ' + status.textContent;
  return document.documentElement.classList.contains('noVNC_connected') ? 'connected' : '';
})()"""
#: The middle of the page, where the app's green shows once noVNC has drawn it.
MIDDLE = Box(560, 360, 160, 80)


def novnc_url(ip: str, token: str) -> str:
    return f"http://{ip}:{apps.NOVNC_PORT}/vnc.html?autoconnect=1&resize=remote#password={token}"


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
    app = lab.run_app("firefox", session_files, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/colour.html"})
    with desktop.browser(novnc_url(lab.ip(app), session_files.password)) as page:
        state, shot = wait_for_novnc(page, lab, app, "images-novnc", "noVNC to show the app (or fail)")
    assert state == "drawn", f"noVNC did not show the app: {state!r}; see {shot.path}"
    assert shot.fraction_near(GREEN) > 0.5, f"the app's page does not fill the browser; see {shot.path}"
    # The token travelled in the fragment: websockify's request log does not hold it.
    assert session_files.password not in lab.logs(app)


def test_novnc_with_a_wrong_token_says_so_and_shows_nothing(lab: Lab, desktop: Desktop,
                                                            session_files: SessionFiles, pages: object) -> None:
    app = lab.run_app("firefox", session_files, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/colour.html"})
    with desktop.browser(novnc_url(lab.ip(app), "wrong-token")) as page:
        state, shot = wait_for_novnc(page, lab, app, "images-novnc-wrong-token", "noVNC to fail")
    assert isinstance(state, str) and "Authentication failure" in state, state
    assert shot.fraction_near(GREEN) < 0.01
