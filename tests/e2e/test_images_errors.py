"""What the user sees when something is wrong: a clear line in the container's log and an exit
code cloudify can act on (kod.apps), never a dialog waiting for a click or a hang."""

from __future__ import annotations

import pytest

from kod import apps
from tests.e2e.images_support import (  # noqa: F401  (fixtures)
    Lab, SessionFiles, built_images, lab, session_files,
)
from tests.fixtures.desktop import Desktop

pytestmark = pytest.mark.e2e

#: A window-less "app": enough for the session's servers to run.
IDLE = ["sleep", "infinity"]


def test_a_wrong_token_ends_the_viewer_with_a_clear_message(lab: Lab, desktop: Desktop,
                                                            session_files: SessionFiles) -> None:
    app = lab.run_app("app-base", session_files, command=IDLE)
    viewer = lab.run_viewer(desktop, session_files, app, sound=False,
                            env={apps.ENV_VNC_PASSWORD: "not-the-token", apps.ENV_VNC_PASSWORD_FILE: ""})
    assert lab.wait_exit(viewer, 90) == apps.VIEWER_EXIT_AUTH
    assert "refused the password: wrong or expired session token" in lab.logs(viewer)
    assert desktop.find_window("TigerVNC") is None, "a dialog is left on the desktop"


def test_the_app_gives_up_when_no_viewer_connects_in_time(lab: Lab, session_files: SessionFiles) -> None:
    app = lab.run_app("app-base", session_files, command=IDLE, env={apps.ENV_CONNECT_TIMEOUT: "3"})
    assert lab.wait_exit(app, 60) == apps.APP_EXIT_NO_VIEWER
    assert "no viewer connected within 3 s (KOD_CONNECT_TIMEOUT); giving up" in lab.logs(app)


def test_the_app_ends_when_its_viewer_is_gone_for_the_timeout(lab: Lab, desktop: Desktop,
                                                              session_files: SessionFiles) -> None:
    app = lab.run_app("app-base", session_files, command=IDLE, env={apps.ENV_CONNECT_TIMEOUT: "4"})
    viewer = lab.run_viewer(desktop, session_files, app, sound=False)
    desktop.wait_for_window("^desktop - TigerVNC$", timeout=60)  # the base image names its desktop so
    viewer.kill()
    assert lab.wait_exit(app, 60) == apps.APP_EXIT_NO_VIEWER
    assert "the viewer disconnected and none came back within 4 s" in lab.logs(app)


@pytest.mark.parametrize(("env", "message"), [
    ({apps.ENV_GEOMETRY: "huge"}, "KOD_GEOMETRY='huge' is not WIDTHxHEIGHT"),
    ({apps.ENV_DEPTH: "8"}, "the colour depth must be 16, 24 or 32"),
    ({apps.ENV_VNC_PORT: "70000"}, "KOD_VNC_PORT='70000' is not a TCP port"),
    ({apps.ENV_VNC_PASSWORD_FILE: "/run/secrets/kod/missing"}, "does not exist or is not a file"),
], ids=["geometry", "depth", "port", "password-file"])
def test_the_app_refuses_bad_configuration(env: dict[str, str], message: str, lab: Lab,
                                           session_files: SessionFiles) -> None:
    app = lab.run_app("app-base", session_files, command=IDLE, env=env)
    assert lab.wait_exit(app, 60) == apps.APP_EXIT_CONFIG
    assert message in lab.logs(app)


@pytest.mark.parametrize(("env", "message"), [
    ({apps.ENV_QUALITY: "12"}, "KOD_QUALITY=12 must be a whole number from 0 to 9"),
    ({apps.ENV_ENCRYPT: "yes"}, "KOD_ENCRYPT=yes must be 0 or 1"),
    ({"DISPLAY": ":97"}, "no X socket /tmp/.X11-unix/X97 for DISPLAY=:97"),
    ({"XAUTHORITY": "/nonexistent"}, "XAUTHORITY=/nonexistent is not readable"),
], ids=["quality", "encrypt", "display", "xauthority"])
def test_the_viewer_refuses_bad_configuration(env: dict[str, str], message: str, lab: Lab, desktop: Desktop,
                                              session_files: SessionFiles) -> None:
    app = lab.run_app("app-base", session_files, command=IDLE)
    viewer = lab.run_viewer(desktop, session_files, app, env=env)
    assert lab.wait_exit(viewer, 60) == apps.VIEWER_EXIT_CONFIG
    assert message in lab.logs(viewer)


def test_the_viewer_says_when_the_app_cannot_be_reached(lab: Lab, desktop: Desktop,
                                                        session_files: SessionFiles) -> None:
    app = lab.run_app("app-base", session_files, command=IDLE)
    # Nothing listens on the viewer's own loopback.
    viewer = lab.run_viewer(desktop, session_files, app, sound=False,
                            env={apps.ENV_TARGET_HOST: "127.0.0.1", apps.ENV_CONNECT_TIMEOUT: "2"})
    assert lab.wait_exit(viewer, 60) == apps.VIEWER_EXIT_UNREACHABLE
    assert "did not accept a connection within 2 s" in lab.logs(viewer)


def test_the_app_image_refuses_to_run_as_root(lab: Lab, session_files: SessionFiles) -> None:
    app = lab.run_app("app-base", session_files, command=IDLE, user="0")
    assert lab.wait_exit(app, 60) == apps.APP_EXIT_CONFIG
    assert "refusing to run as root" in lab.logs(app)
