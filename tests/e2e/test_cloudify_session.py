"""`cloudify firefox` end to end, pod run mode: Firefox from a cluster pod on the desktop's screen,
its sound in the desktop's speakers, and nothing left once the user closes it."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

import pytest

from kod import labels
from tests.e2e.cloudify_support import (  # noqa: F401 - fixtures
    FIREFOX_WINDOW,
    Cloudify,
    Session,
    cloudify,
    cloudify_images,
    firefox_drawn,
    keys,
    type_text,
    wait_gone,
)

pytestmark = pytest.mark.e2e

#: A 6 s, 440 Hz tone and a page that plays it (Firefox plays WAV in <audio>, not as a document).
TONE_PAGE = (
    "python3 -c \"import math, struct, wave; w = wave.open('/tmp/kod-tone.wav', 'wb'); w.setnchannels(1); "
    "w.setsampwidth(2); w.setframerate(44100); w.writeframes(b''.join(struct.pack('<h', int(16000 * "
    "math.sin(2 * math.pi * 440 * i / 44100))) for i in range(44100 * 6)))\" && "
    "echo '<html><body><h1>kod tone</h1><audio src=kod-tone.wav autoplay controls></audio></body></html>' "
    "> /tmp/kod-tone.html"
)


#: A 1.5 s, 440 Hz tone at half of full scale, played with paplay in the app container.
PLAY_TONE = (
    "python3 -c \"import math, struct, wave; w = wave.open('/tmp/kod-beep.wav', 'wb'); w.setnchannels(1); "
    "w.setsampwidth(2); w.setframerate(44100); w.writeframes(b''.join(struct.pack('<h', int(16384 * "
    "math.sin(2 * math.pi * 440 * i / 44100))) for i in range(int(44100 * 1.5))))\" && paplay /tmp/kod-beep.wav"
)


def hear_the_app(cloudify: Cloudify, desktop: Any, pod: str, timeout: float = 60) -> float:
    """A tone played in the app pod comes out of the desktop's speakers (the viewer may still be
    connecting the sound stream: play it again until it does). Returns its amplitude there."""
    deadline = time.monotonic() + timeout
    while True:
        with desktop.record() as rec:
            cloudify.exec_app(pod, PLAY_TONE)
        amplitude = rec.tone(440)
        if amplitude > 0.3 and abs(rec.frequency() - 440) < 5:
            return float(amplitude)
        assert time.monotonic() < deadline, f"no 440 Hz tone in the speakers (amplitude {amplitude:.3f}, rms {rec.rms():.4f})"


def see_firefox(cloudify: Cloudify, desktop: Any, name: str, *args: str) -> tuple[Session, Any]:
    """Start `cloudify ARGS firefox`; wait until Firefox is drawn in the viewer on the desktop;
    keep a screenshot of it."""
    session = cloudify.start(*args, "firefox")
    try:
        window = desktop.wait_for_window(FIREFOX_WINDOW, timeout=120)
        desktop.wait_for_content(window.box, firefox_drawn, timeout=120, what="Firefox drawn in the viewer window")
    except BaseException:
        print(session.stderr)
        raise
    shot = desktop.screenshot(f"cloudify-{name}", region=window.box)
    assert firefox_drawn(shot)
    return session, window


def close_firefox(desktop: Any, window: Any, session: Session, how: str = "ctrl+q") -> int:
    """Quit Firefox as its user would (Ctrl+Q, or Ctrl+Shift+W: close its window; again, like a
    user, when Firefox was still busy starting and let the first one pass); cloudify's exit code."""
    for _ in range(3):
        if desktop.find_window(FIREFOX_WINDOW) is not None:
            keys(desktop, window.id, how)
        try:
            return session.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue
    return session.wait(timeout=60)


def test_firefox_shows_plays_sound_and_leaves_nothing_when_closed(cloudify: Cloudify, desktop: Any) -> None:
    session, window = see_firefox(cloudify, desktop, "pod-mode", "--timings")
    sid = session.session_id
    viewer = cloudify.kubectl_json("get", "pods", "-n", cloudify.namespace, "-l", f"{labels.ROLE}=viewer")["items"]
    assert [p["spec"]["nodeName"] for p in viewer] == [cloudify.kubectl_json("get", "nodes", "-l", f"{labels.DESKTOP_OF}={cloudify.user}")["items"][0]["metadata"]["name"]]
    app = cloudify.app_pod(sid)
    node = cloudify.kubectl_json("get", "pod", "-n", cloudify.namespace, app)["spec"]["nodeName"]
    assert labels.DESKTOP_OF not in cloudify.kubectl_json("get", "node", node)["metadata"]["labels"]

    # Firefox itself plays a 440 Hz tone; it must come out of the desktop's speakers.
    cloudify.exec_app(app, TONE_PAGE)
    with desktop.record() as rec:
        keys(desktop, window.id, "ctrl+l")
        type_text(desktop, window.id, "file:///tmp/kod-tone.html\n")
        time.sleep(5)  # the tone lasts 6 s: record while it plays
    desktop.screenshot("cloudify-pod-mode-tone", region=window.box)
    viewer_log = cloudify.kubectl("logs", "-n", cloudify.namespace, f"kod-firefox-{sid}-viewer", check=False).stdout
    assert rec.tone(440) > 0.05, f"no 440 Hz tone in the speakers (rms {rec.rms():.4f}); viewer log:\n{viewer_log}"

    assert close_firefox(desktop, window, session, how="ctrl+shift+w") == 0, session.stderr  # close its window
    assert "first frame" in session.stderr
    assert wait_gone(cloudify, timeout=30) == {}, "the session left objects behind"
    assert cloudify.pvcs() == []
    assert desktop.find_window(FIREFOX_WINDOW) is None


@pytest.mark.parametrize("flags", [[], ["-s"]], ids=["default", "dash-s"])
def test_a_session_is_encrypted_by_default_and_exposes_nothing_unencrypted(
        cloudify: Cloudify, desktop: Any, flags: list[str]) -> None:
    # No flag: encrypted. The original's -s is still accepted and changes nothing.
    session, window = see_firefox(cloudify, desktop, "secure", *flags)
    assert "WARNING" not in session.stderr
    sid = session.session_id
    service = cloudify.kubectl_json("get", "services", "-n", cloudify.namespace, "-l", f"{labels.SESSION}={sid}")["items"][0]
    assert [p["name"] for p in service["spec"]["ports"]] == ["ssh"]
    assert service["metadata"]["annotations"]["kod.io/secure"] == "true"
    pod = cloudify.kubectl_json("get", "pod", "-n", cloudify.namespace, cloudify.app_pod(sid))
    ip = pod["status"]["podIP"]
    # From outside the pod: VNC and noVNC refuse, sshd answers (and only with the session's key).
    for port in (5900, 6080):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip, port), timeout=5).close()
    with socket.create_connection((ip, 2222), timeout=5) as s:
        assert s.recv(64).startswith(b"SSH-2.0-")
    assert close_firefox(desktop, window, session) == 0, session.stderr
    assert wait_gone(cloudify, timeout=30) == {}


def test_viewer_reaches_the_app_through_the_api_server_port_forward(cloudify: Cloudify, desktop: Any) -> None:
    session, window = see_firefox(cloudify, desktop, "port-forward", "--reach", "port-forward")
    assert "via the API server's port-forward" in session.stderr
    services = cloudify.kubectl_json("get", "services", "-n", cloudify.namespace)["items"]
    assert [s["spec"]["type"] for s in services] == ["ClusterIP"]
    assert close_firefox(desktop, window, session) == 0, session.stderr
    assert wait_gone(cloudify, timeout=30) == {}


def test_two_sessions_of_the_same_app_at_once(cloudify: Cloudify, desktop: Any) -> None:
    first = cloudify.start("firefox")
    second = cloudify.start("-r", "docker", "firefox")
    deadline = time.monotonic() + 120
    while len(desktop.windows(FIREFOX_WINDOW)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    windows = desktop.windows(FIREFOX_WINDOW)
    assert len(windows) == 2, first.stderr + second.stderr
    for i, win in enumerate(windows):
        desktop.wait_for_content(win.box, firefox_drawn, timeout=120, what=f"Firefox drawn in window {i}")
    listed = {s["session"]: s for s in cloudify.sessions()}
    assert {first.session_id, second.session_id} <= set(listed)
    assert all(listed[s.session_id]["state"] == "running" for s in (first, second))
    for win in windows:
        keys(desktop, win.id, "ctrl+q")
    assert first.wait() == 0 and second.wait() == 0, first.stderr + second.stderr
    assert wait_gone(cloudify, timeout=30) == {}
