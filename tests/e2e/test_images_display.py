"""The apps on the user's screen: app container + viewer container, judged by screenshots of the
desktop's X server, and ended by closing the app as a user does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.e2e.images_support import (  # noqa: F401  (fixtures)
    APP_ARGS, APP_TITLES, BLENDER_ORANGE, DRAWN, GEOMETRY, GREEN, LO_START_CENTER, PAGES_MOUNT, Lab, SessionFiles,
    built_images, close_through_viewer, dark_share, lab, pages, session_files, viewer_window, wait_exits,
    wait_for_content,
)
from tests.fixtures.desktop import Desktop, Image, wait_for

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class AppCase:
    app: str
    #: Regular expression of the app's own window title, on the app container's display.
    title: str
    args: str
    #: Cheap check on a sampled capture: the app has drawn (used to wait).
    drawn: Callable[[Image], bool]
    #: The assertions on the full-resolution screenshot of the viewer window.
    check: Callable[[Image], None]


def check_firefox(img: Image) -> None:
    assert img.fraction_near(GREEN) > 0.5, "the test page's green does not fill the viewer window"
    assert img.distinct_colours() > 20, "no text on the page: the window is not really drawn"


def check_libreoffice(img: Image) -> None:
    assert img.fraction_near(LO_START_CENTER, 6) > 0.3, "no Start Center backdrop in the viewer window"
    assert img.fraction_near((255, 255, 255), 4) > 0.05, "no Start Center side bar"
    assert img.distinct_colours() > 1000, "the Start Center's artwork and icons are missing"


def check_blender(img: Image) -> None:
    assert dark_share(img) > 0.6, "Blender's dark interface does not fill the viewer window"
    assert img.fraction_near(BLENDER_ORANGE, 50) > 0.0002, "no orange outline of the selected default cube"
    assert img.distinct_colours() > 1000, "the 3D viewport and panels are not drawn"


CHECKS = {"firefox": check_firefox, "libreoffice": check_libreoffice, "blender": check_blender}
CASES = [AppCase(app, APP_TITLES[app], APP_ARGS[app], DRAWN[app], CHECKS[app]) for app in CHECKS]


@pytest.mark.parametrize("case", CASES, ids=[c.app for c in CASES])
def test_app_shows_on_the_desktop_and_closing_it_ends_both_containers(
    case: AppCase, lab: Lab, desktop: Desktop, session_files: SessionFiles, pages: object,
) -> None:
    env = {"KOD_APP_ARGS": case.args} if case.args else {}
    app = lab.run_app(case.app, session_files, env=env, pages=pages)  # type: ignore[arg-type]
    viewer = lab.run_viewer(desktop, session_files, app)

    window = viewer_window(desktop, case.app)
    assert (window.box.width, window.box.height) == GEOMETRY
    # The app's own window, by its title, on the app container's display.
    wait_for(lambda: lab.app_windows(app, case.title), 120, f"a window /{case.title}/ in the {case.app} container",
             interval=0.5)
    wait_for_content(desktop, window.box, case.drawn, 120, f"{case.app} drawn in the viewer window")
    shot = desktop.screenshot(f"images-{case.app}", region=window.box)
    case.check(shot)

    # The user closes the app: both containers end, with exit code 0.
    sent = close_through_viewer(desktop, window)
    (app_code, app_end), (viewer_code, viewer_end) = wait_exits(app, viewer, timeout=60)
    assert app_code == 0, lab.logs(app)[-3000:]
    assert viewer_code == 0, lab.logs(viewer)[-3000:]
    assert "the app ended with exit code 0" in lab.logs(app)
    assert "the session ended" in lab.logs(viewer)
    # Measured, not asserted (the benchmark reports it): the time from the keys to both ends.
    print(f"\n{case.app}: closed; app container ended after {app_end - sent:.2f} s, "
          f"viewer container after {viewer_end - sent:.2f} s")
    assert desktop.find_window(f"^{case.app} - TigerVNC$") is None


def test_viewer_window_follows_the_app_display_geometry(lab: Lab, desktop: Desktop, session_files: SessionFiles,
                                                        pages: object) -> None:
    app = lab.run_app("firefox", session_files, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_GEOMETRY": "1024x640", "KOD_DEPTH": "16", "KOD_APP_ARGS": f"file://{PAGES_MOUNT}/colour.html"})
    lab.run_viewer(desktop, session_files, app)
    window = viewer_window(desktop, "firefox")
    assert (window.box.width, window.box.height) == (1024, 640)
    # 16-bit colour: the green comes back slightly quantised, still green.
    wait_for_content(desktop, window.box, lambda s: s.fraction_near(GREEN, 12) > 0.5, 120, "the page in 16-bit colour")
    shot = desktop.screenshot("images-firefox-1024x640x16", region=window.box)
    assert shot.fraction_near(GREEN, 12) > 0.5
