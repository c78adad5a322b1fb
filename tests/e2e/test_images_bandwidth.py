"""Quality (-q) and compression (-c) change what goes over the network for the same animation,
measured with the kernel's counter of bytes the app container sends (the busiest of a few slices
per setting: see SLICES)."""

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

#: The animation is measured in SLICES slices of SLICE seconds each, per setting; the busiest
#: slice is the setting's rate. On a loaded machine (the suites run in two lanes on 2 cores) the
#: browser or the viewer can stall for seconds, and a stall is not what the settings change: one
#: stalled window once read as "compression 0 sent 1279 bytes in 6 s".
SLICE = 2.0
SLICES = 4


def rate_sent(lab: Lab, desktop: Desktop, files: SessionFiles, app: Any, quality: int, compression: int) -> float:
    """Bytes per second the app sends to one viewer with these settings, in the busiest slice."""
    viewer = lab.run_viewer(desktop, files, app, sound=False,
                            env={apps.ENV_QUALITY: str(quality), apps.ENV_COMPRESSION: str(compression)})
    window = viewer_window(desktop, "firefox")
    # The animation is on screen (many colours) before counting.
    wait_for_content(desktop, window.box, lambda s: s.distinct_colours() > 8, 120, "the animation in the viewer")
    rates = []
    before, at = lab.tx_bytes(app), time.monotonic()
    for _ in range(SLICES):
        time.sleep(SLICE)
        after, now = lab.tx_bytes(app), time.monotonic()
        rates.append((after - before) / (now - at))
        before, at = after, now
    viewer.stop(timeout=5)
    wait_for(lambda: desktop.find_window("^firefox - TigerVNC$") is None, 30, "the viewer window to close")
    print(f"\nquality {quality}, compression {compression}: {max(rates) * 8 / 1e6:.2f} Mbit/s in the busiest "
          f"slice (slices: {', '.join(f'{r * 8 / 1e6:.2f}' for r in rates)})")
    return max(rates)


def test_a_higher_quality_sends_more_for_the_same_animation(lab: Lab, desktop: Desktop, session_files: SessionFiles,
                                                            pages: object) -> None:
    # Photo-like content: JPEG, whose quality the level sets.
    app = lab.run_app("firefox", session_files, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/anim.html#mixed"})
    low = rate_sent(lab, desktop, session_files, app, quality=1, compression=2)
    high = rate_sent(lab, desktop, session_files, app, quality=9, compression=2)
    assert high > 2 * low, f"quality 9 sent {high:.0f} bytes/s, quality 1 {low:.0f}: the quality setting has no effect"


def test_a_higher_compression_sends_less_for_the_same_animation(lab: Lab, desktop: Desktop,
                                                                session_files: SessionFiles, pages: object) -> None:
    # Flat colours: palette + zlib, whose effort the compression level sets.
    app = lab.run_app("firefox", session_files, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/anim.html#blocks"})
    none = rate_sent(lab, desktop, session_files, app, quality=5, compression=0)
    most = rate_sent(lab, desktop, session_files, app, quality=5, compression=9)
    assert none > 4 * most, f"compression 0 sent {none:.0f} bytes/s, compression 9 {most:.0f}: the setting has no effect"
