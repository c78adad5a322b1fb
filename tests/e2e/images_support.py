"""Fixtures of the image tests: the built images, a container lab per test, the session's
secrets, and the test pages.

The lab itself (app + viewer containers in local Docker, run as cloudify's docker run mode runs
them, every container labelled kod.test=images with this run's id and removed when its test
ends) lives in bench/lab.py, which the image benchmarks share; its names are re-exported here.

    def test_x(lab, desktop, session_files):
        app = lab.run_app("firefox", session_files)
        viewer = lab.run_viewer(desktop, session_files, app)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.lab import (  # noqa: F401 - the lab's names, used by the image tests
    APP_ARGS,
    APP_TITLES,
    BLENDER_ORANGE,
    DRAWN,
    GEOMETRY,
    GREEN,
    LABEL,
    LABEL_VALUE,
    LO_START_CENTER,
    PAGES_MOUNT,
    RUN_ID,
    RUN_LABEL,
    TEST_IMAGES,
    Lab,
    SessionFiles,
    close_through_viewer,
    dark_share,
    make_session_files,
    pages_dir,
    sample,
    viewer_window,
    wait_exits,
    wait_for_content,
)
from kod import apps


@pytest.fixture(scope="session")
def built_images(docker_engine: Any) -> tuple[str, ...]:
    """The app base, the app images and the viewer, built once (skipped when up to date)."""
    from localenv import images
    from localenv.progress import Progress

    images.build_all(Progress(quiet=True), only=TEST_IMAGES)
    return tuple(apps.image_ref(name) for name in TEST_IMAGES)


@pytest.fixture
def lab(docker_engine: Any, built_images: tuple[str, ...], request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The test's containers, removed when the test ends (even when it fails)."""
    lab = Lab(docker_engine, request.node.name)
    try:
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture
def session_files(tmp_path: Path) -> SessionFiles:
    return make_session_files(tmp_path / "session")


@pytest.fixture(scope="session")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test pages (tests/e2e/pages), readable by the app container's user, and tones to play:
    440 Hz for paplay, 660 Hz for Firefox's <audio autoplay> (tone.html)."""
    return pages_dir(tmp_path_factory.mktemp("pages"), tones={"tone440.wav": (440, 1.5), "tone.wav": (660, 2.0)})
