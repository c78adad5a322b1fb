"""The app's sound in the user's speakers: played in the app container, carried by the viewer's
`ssh -R` to the desktop's kod PulseAudio socket, recorded from the null sink's monitor."""

from __future__ import annotations

import pytest

from tests.e2e.images_support import (  # noqa: F401  (fixtures)
    PAGES_MOUNT, Lab, SessionFiles, built_images, lab, pages, session_files, viewer_window,
)
from tests.fixtures.desktop import Desktop, wait_for

pytestmark = pytest.mark.e2e


def wait_for_audio_tunnel(lab: Lab, viewer: object) -> None:
    wait_for(lambda: "ssh tunnels up" in lab.logs(viewer), 90, "the viewer's ssh tunnels", interval=0.2)


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_a_tone_played_in_the_app_container_comes_out_of_the_desktop_speakers(
    encrypt: bool, lab: Lab, desktop: Desktop, session_files: SessionFiles, pages: object,
) -> None:
    app = lab.run_app("firefox", session_files, encrypt=encrypt, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": "about:blank"})
    viewer = lab.run_viewer(desktop, session_files, app, encrypt=encrypt)
    viewer_window(desktop, "firefox")
    wait_for_audio_tunnel(lab, viewer)

    silence = desktop.record_for(0.6)
    with desktop.record() as rec:
        code, out = lab.exec(app, "paplay", f"{PAGES_MOUNT}/tone440.wav")
    assert code == 0, out

    assert silence.rms() < 0.001, "the speakers were not silent before the tone"
    assert abs(rec.frequency() - 440) < 5, f"heard {rec.frequency():.1f} Hz, played 440 Hz"
    amplitude = rec.tone(440)
    assert amplitude > 0.3, f"the 440 Hz tone (played at 0.5 of full scale) arrived at {amplitude:.3f}"
    assert rec.tone(400) < amplitude / 20 and rec.tone(480) < amplitude / 20, "the sound is not a clean 440 Hz tone"
    assert rec.rms() > 100 * max(silence.rms(), 1e-5)
    print(f"\n440 Hz played at 0.5: recorded amplitude {amplitude:.3f}, rms {rec.rms():.3f}, "
          f"frequency {rec.frequency():.1f} Hz; silence rms {silence.rms():.5f}")


def test_firefox_autoplays_a_page_sound_into_the_desktop_speakers(
    lab: Lab, desktop: Desktop, session_files: SessionFiles, pages: object,
) -> None:
    app = lab.run_app("firefox", session_files, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/tone.html"})
    viewer = lab.run_viewer(desktop, session_files, app)
    viewer_window(desktop, "firefox")
    wait_for_audio_tunnel(lab, viewer)

    # The page loops a 660 Hz tone with <audio autoplay>: no click, thanks to the image's prefs.
    wait_for(lambda: desktop.record_for(1.0).tone(660) > 0.2, 90, "Firefox's 660 Hz tone in the desktop speakers",
             interval=0.1)
    rec = desktop.record_for(1.5)
    assert abs(rec.frequency() - 660) < 8, f"heard {rec.frequency():.1f} Hz"
    assert rec.tone(660) > 0.2
