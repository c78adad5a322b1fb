"""The app's sound in the user's speakers: played into the app container's own PulseAudio, streamed
(playback only) to the viewer over its `ssh -L`, played by the viewer on the desktop's kod
PulseAudio socket, recorded from the null sink's monitor. And what the app can no longer do: reach
the desktop's PulseAudio to record its microphone."""

from __future__ import annotations

import array
from typing import Any

import pytest

from kod import apps
from tests.e2e.images_support import (  # noqa: F401  (fixtures)
    PAGES_MOUNT, Lab, SessionFiles, built_images, lab, pages, session_files, viewer_window,
)
from tests.fixtures.desktop import Desktop, Recording, wait_for

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
    app = lab.run_app("firefox", session_files, encrypt=True, pages=pages,  # type: ignore[arg-type]
                      env={"KOD_APP_ARGS": f"file://{PAGES_MOUNT}/tone.html"})
    viewer = lab.run_viewer(desktop, session_files, app, encrypt=True)  # encrypted: cloudify's default
    viewer_window(desktop, "firefox")
    wait_for_audio_tunnel(lab, viewer)

    # The page loops a 660 Hz tone with <audio autoplay>: no click, thanks to the image's prefs.
    wait_for(lambda: desktop.record_for(1.0).tone(660) > 0.2, 90, "Firefox's 660 Hz tone in the desktop speakers",
             interval=0.1)
    rec = desktop.record_for(1.5)
    assert abs(rec.frequency() - 660) < 8, f"heard {rec.frequency():.1f} Hz"
    assert rec.tone(660) > 0.2


#: The desktop's "microphone" in the test below: a PulseAudio source that hears a 1 kHz tone.
MIC_FREQ = 1000
MIC_SOURCE = "kod_test_microphone"


def record_in(lab: Lab, container: Any, source: str, seconds: float = 3.0, rate: int = 44100) -> Recording:
    """Records `source` from inside `container` with the app's own tools (its PULSE_SERVER) for at
    most `seconds` (parec's start in a busy container takes part of them)."""
    out = container.exec_run(
        ["timeout", str(seconds), "parec", "--raw", f"--device={source}", "--format=s16le", f"--rate={rate}",
         "--channels=1", "--latency-msec=50"], demux=True)
    data = out.output[0] or b""
    return Recording(rate=rate, samples=array.array("h", data[:len(data) - len(data) % 2]))


def test_the_app_container_cannot_record_the_desktop_but_its_sound_still_arrives(
    lab: Lab, desktop: Desktop, session_files: SessionFiles, pages: object,
) -> None:
    # The desktop has a microphone that hears a 1 kHz tone, and it is the default source.
    mic = desktop.pactl("load-module", "module-sine-source", f"source_name={MIC_SOURCE}", f"frequency={MIC_FREQ}")
    assert mic.returncode == 0, mic.stderr
    default = desktop.pactl("get-default-source").stdout.strip()
    desktop.pactl("set-default-source", MIC_SOURCE)
    try:
        app = lab.run_app("firefox", session_files, encrypt=True, pages=pages,  # type: ignore[arg-type]
                          env={"KOD_APP_ARGS": "about:blank"})
        viewer = lab.run_viewer(desktop, session_files, app, encrypt=True)
        viewer_window(desktop, "firefox")
        wait_for_audio_tunnel(lab, viewer)

        # What the app's processes reach is the app's own PulseAudio: its null sink, nothing else.
        code, sources = lab.exec(app, "pactl", "list", "short", "sources")
        assert code == 0, sources
        names = [line.split("\t")[1] for line in sources.splitlines() if "\t" in line]
        assert names == ["kod.monitor"], f"the app container sees these sources: {names}"
        code, out = lab.exec(app, "timeout", "5", "parec", "--raw", f"--device={MIC_SOURCE}", "--latency-msec=50")
        assert code not in (0, 124) and "No such entity" in out, f"parec of the desktop's microphone: {code}: {out}"
        # Its default source (and every source it has) hears nothing of the desktop's microphone.
        for source in ("@DEFAULT_SOURCE@", *names):
            heard = record_in(lab, app, source)
            assert len(heard.samples) > 44100 // 2, f"recording {source} in the app container failed"
            assert heard.tone(MIC_FREQ) < 0.001, f"the app recorded the desktop's microphone through {source}"
        # The sound stream's port speaks raw PCM out, not PulseAudio's protocol.
        code, out = lab.exec(app, "env", f"PULSE_SERVER=tcp:127.0.0.1:{apps.AUDIO_PORT}", "timeout", "10", "pactl", "info")
        assert code != 0, out

        # The session key cannot open a path back either: the app's sshd refuses remote forwards,
        # to the desktop's sound socket (seen by the viewer) as to any TCP port.
        pulse = desktop.container_env()[apps.ENV_PULSE_SOCKET]
        ssh = ["timeout", "20", "ssh", "-F", "/dev/null", "-N", "-i", "/run/kod/id", "-o", "BatchMode=yes",
               "-o", "IdentitiesOnly=yes", "-o", f"HostKeyAlias={apps.VIEWER_HOST_KEY_ALIAS}",
               "-o", "UserKnownHostsFile=/run/kod/known_hosts", "-o", "ExitOnForwardFailure=yes",
               "-p", str(apps.SSH_PORT), "-l", apps.APP_USER]
        for forward in (f"127.0.0.1:4799:{pulse}", "4798:127.0.0.1:22", f"/tmp/kod-pulse:{pulse}"):
            code, out = lab.exec(viewer, *ssh, "-R", forward, lab.ip(app))
            assert code == 255 and "forwarding failed" in out, f"ssh -R {forward}: exit {code}: {out}"

        # Meanwhile the app's own sound still comes out of the desktop's speakers.
        with desktop.record() as rec:
            code, out = lab.exec(app, "paplay", f"{PAGES_MOUNT}/tone440.wav")
        assert code == 0, out
        assert rec.tone(440) > 0.3, f"the app's 440 Hz tone arrived at {rec.tone(440):.3f}"
    finally:
        desktop.pactl("set-default-source", default)
        desktop.pactl("unload-module", mic.stdout.strip())
