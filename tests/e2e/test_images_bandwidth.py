"""Quality (-q) and compression (-c) change what goes over the network for the same animation,
measured with the kernel's counter of bytes the app container sends."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kod import apps
from tests.e2e.images_support import (  # noqa: F401  (fixtures)
    PAGES_MOUNT, Lab, SessionFiles, built_images, lab, pages, session_files, viewer_window, wait_for_content,
)
from tests.fixtures.desktop import Desktop, wait_for

pytestmark = pytest.mark.e2e

#: Seconds of animation measured per setting.
WINDOW = 6.0


def bytes_sent(lab: Lab, desktop: Desktop, files: SessionFiles, app: Any, quality: int, compression: int) -> int:
    """Bytes the app sends to one viewer with these settings during WINDOW seconds of animation."""
    viewer = lab.run_viewer(desktop, files, app, sound=False,
                            env={apps.ENV_QUALITY: str(quality), apps.ENV_COMPRESSION: str(compression)})
    window = viewer_window(desktop, "firefox")
    # The animation is on screen (many colours) before counting.
    wait_for_content(desktop, window.box, lambda s: s.distinct_colours() > 8, 120, "the animation in the viewer")
    before = lab.tx_bytes(app)
    time.sleep(WINDOW)  # the measurement window
    sent = lab.tx_bytes(app) - before
    viewer.stop(timeout=5)
    wait_for(lambda: desktop.find_window("^firefox - TigerVNC$") is None, 30, "the viewer window to close")
    print(f"\nquality {quality}, compression {compression}: {sent / WINDOW * 8 / 1e6:.1f} Mbit/s")
    return sent


def test_a_higher_quality_sends_more_for_the_same_animation(lab: Lab, desktop: Desktop, session_files: SessionFiles,
                                                            pages: object) -> None:
    # Photo-like content: JPEG, whose quality the level sets.
    app = lab.run_app("firefox", session_files, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/anim.html#mixed"})
    low = bytes_sent(lab, desktop, session_files, app, quality=1, compression=2)
    high = bytes_sent(lab, desktop, session_files, app, quality=9, compression=2)
    assert high > 2 * low, f"quality 9 sent {high} bytes, quality 1 {low}: the quality setting has no effect"


def test_a_higher_compression_sends_less_for_the_same_animation(lab: Lab, desktop: Desktop,
                                                                session_files: SessionFiles, pages: object) -> None:
    # Flat colours: palette + zlib, whose effort the compression level sets.
    app = lab.run_app("firefox", session_files, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/anim.html#blocks"})
    none = bytes_sent(lab, desktop, session_files, app, quality=5, compression=0)
    most = bytes_sent(lab, desktop, session_files, app, quality=5, compression=9)
    assert none > 4 * most, f"compression 0 sent {none} bytes, compression 9 {most}: the setting has no effect"
