"""The other run modes: the viewer in local Docker (-r docker), the desktop's own vncviewer and ssh
(-r native), and noVNC in a browser (-p novnc)."""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest

from tests.e2e.cloudify_support import (  # noqa: F401 - fixtures
    FIREFOX_WINDOW,
    Cloudify,
    cloudify,
    cloudify_images,
    docker_containers,
    firefox_drawn,
    keys,
    wait_gone,
)
from tests.e2e.test_cloudify_session import close_firefox, hear_the_app, see_firefox

pytestmark = pytest.mark.e2e

#: Truthy once noVNC's canvas holds Firefox drawn: hundreds of colours in a sample of its pixels.
CANVAS_SHOWS_FIREFOX = """(() => {
  const c = document.querySelector('#noVNC_container canvas');
  if (!c || c.width < 200) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4 * 7) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  return seen.size > 150 ? seen.size : 0;
})()"""


def test_docker_run_mode(cloudify: Cloudify, desktop: Any) -> None:
    session, window = see_firefox(cloudify, desktop, "docker-mode", "-r", "docker")
    assert docker_containers(f"io.kod.session={session.session_id}") == [f"kod-firefox-{session.session_id}-viewer"]
    # No viewer pod: the virtual node is not involved.
    assert cloudify.kubectl_json("get", "pods", "-n", cloudify.namespace, "-l", "kod.io/role=viewer")["items"] == []
    # The viewer container plays the app's sound stream on the desktop.
    hear_the_app(cloudify, desktop, cloudify.app_pod(session.session_id))
    assert close_firefox(desktop, window, session) == 0, session.stderr
    assert wait_gone(cloudify, timeout=30) == {}


@pytest.mark.parametrize("secure", [True, False], ids=["default", "insecure"])
def test_native_run_mode(cloudify: Cloudify, desktop: Any, secure: bool) -> None:
    # Encrypted by default; --insecure: VNC through cloudify's port-forward, said to be clear.
    args = ["-r", "native"] + ([] if secure else ["--insecure"])
    session, window = see_firefox(cloudify, desktop, f"native-{'secure' if secure else 'clear'}", *args)
    assert ("WARNING: --insecure" in session.stderr) is not secure
    # The desktop's own pacat plays the app's sound stream, fetched by the desktop's ssh.
    hear_the_app(cloudify, desktop, cloudify.app_pod(session.session_id))
    assert close_firefox(desktop, window, session) == 0, session.stderr
    assert wait_gone(cloudify, timeout=30) == {}
    assert not list(cloudify.state_dir.rglob("*.json"))


def test_novnc_url_works_in_a_browser(cloudify: Cloudify, desktop: Any) -> None:
    session = cloudify.start("-p", "novnc", "firefox")
    line = session.wait_line("noVNC: open http", timeout=120)
    url = re.search(r"(http://\S+)", line).group(1)  # type: ignore[union-attr]
    assert "#" in url and "password=" in url.split("#", 1)[1], "the password must stay in the URL's fragment"
    session.wait_line("is running", timeout=60)
    with desktop.browser(url) as page:
        # noVNC's canvas shows Firefox drawn (the same criterion as on the X display), and so
        # does the browser's own screenshot of the page.
        colours = page.wait_until(lambda p: p.evaluate(CANVAS_SHOWS_FIREFOX), timeout=120, what="Firefox in noVNC")
        img = page.screenshot("cloudify-novnc")
    assert int(colours) > 150  # type: ignore[call-overload]
    assert firefox_drawn(img), "noVNC shows no Firefox"
    session.proc.send_signal(signal.SIGINT)
    assert session.wait(timeout=90) == 130
    assert wait_gone(cloudify, timeout=30) == {}
