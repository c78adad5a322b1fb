"""`cloudify firefox` on the desktop at home: behind NAT with only the control plane reachable
(and once with NodePorts reachable too, the proving ground's second variant), then on the emulated
home link (20/5 Mbit/s, +40 ms), then with the API server 2 s away and
Firefox installed on the desktop. Firefox shows on the desktop's own screen (screenshot) with its
sound in the desktop's own speakers, in each run mode; the viewer goes through the API server's
port-forward (no node address answers there); cloudify says what it measured and what it chose;
nothing is left behind. Run as their own suite with `pytest -m home`."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from kod import labels
from localenv import netlab
from tests.e2e.cloudify_support import FIREFOX_WINDOW, firefox_drawn, wait_gone
from tests.e2e.test_cloudify_session import close_firefox, hear_the_app, see_firefox
# The fixtures come from the tests.fixtures.home plugin (tests/conftest.py).
from tests.fixtures.home import HomeCloudify

pytestmark = [pytest.mark.e2e, pytest.mark.home]

#: The local Firefox's window (not a viewer's: no " - TigerVNC").
LOCAL_FIREFOX = r"Mozilla Firefox$"


def link_line(stderr: str) -> tuple[float, float | None]:
    """The round trip (s) and the throughput (Mbit/s, None when not measured) cloudify printed."""
    m = re.search(r"link to the cluster: round trip (\d+(?:\.\d+)?) (ms|s)", stderr)
    assert m, f"cloudify did not say what it measured:\n{stderr}"
    rtt = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    rate = re.search(r"(\d+(?:\.\d+)?) Mbit/s down", stderr)
    return rtt, float(rate.group(1)) if rate else None


@pytest.mark.parametrize("mode", ["pod", "docker", "native"])
def test_firefox_behind_nat_shows_plays_sound_and_leaves_nothing(home_cloudify: HomeCloudify, home_desktop: Any,
                                                                  mode: str) -> None:
    session, window = see_firefox(home_cloudify, home_desktop, f"home-nat-{mode}", "-r", mode)
    err = session.stderr
    # No node address answers from the desktop: the viewer came through the API server.
    assert "via the API server's port-forward" in err, err
    rtt, _ = link_line(err)
    assert rtt < 0.05, f"plain NAT has no added delay, yet cloudify measured {rtt * 1000:.0f} ms"
    sid = session.session_id
    if mode == "pod":
        viewer = home_cloudify.kubectl_json("get", "pods", "-n", home_cloudify.namespace, "-l",
                                            f"{labels.ROLE}=viewer")["items"]
        assert [p["spec"]["nodeName"] for p in viewer] == [home_cloudify.node.name]
    hear_the_app(home_cloudify, home_desktop, home_cloudify.app_pod(sid))
    assert close_firefox(home_desktop, window, session) == 0, session.stderr
    assert wait_gone(home_cloudify, timeout=45) == {}, "the session left objects behind"
    assert home_desktop.find_window(FIREFOX_WINDOW) is None


def test_with_node_ports_reachable_the_viewer_goes_straight_to_the_node(home_link: netlab.Netlab,
                                                                      home_cloudify: HomeCloudify,
                                                                      home_desktop: Any) -> None:
    # The proving ground's second variant: the desktop may reach NodePorts as well.
    home_link.set_variant("nodeports")
    session, window = see_firefox(home_cloudify, home_desktop, "home-nodeport-pod", "-r", "pod")
    err = session.stderr
    assert "via NodePort " in err, err
    hear_the_app(home_cloudify, home_desktop, home_cloudify.app_pod(session.session_id))
    assert close_firefox(home_desktop, window, session) == 0, session.stderr
    assert wait_gone(home_cloudify, timeout=45) == {}, "the session left objects behind"


def test_firefox_on_the_home_link_fits_the_picture_to_it(home_link: netlab.Netlab, home_cloudify: HomeCloudify,
                                                        home_desktop: Any) -> None:
    home_link.home_link(True)
    session, window = see_firefox(home_cloudify, home_desktop, "home-link-pod", "--timings")
    err = session.stderr
    rtt, rate = link_line(err)
    assert 0.038 < rtt < 0.150, f"the home link adds 40 ms, cloudify measured {rtt * 1000:.0f} ms"
    assert rate is not None and 5 < rate < 21, f"the home link gives 20 Mbit/s down, cloudify measured {rate}"
    assert "running in the cluster" in err
    chosen = re.search(r"picture: quality \d, compression \d, at most (\d+) frames/s for \d+\.\d Mbit/s", err)
    assert chosen, err
    # The ceiling is the app's X server's own: what it sends a viewer each second.
    pod = home_cloudify.app_pod(session.session_id)
    xvnc = home_cloudify.exec_app(pod, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep '^Xvnc '")
    assert f"-FrameRate {chosen.group(1)} " in xvnc + " ", xvnc
    assert int(chosen.group(1)) < 60, "a 20 Mbit/s link should lower the frame-rate ceiling"
    hear_the_app(home_cloudify, home_desktop, pod)
    assert close_firefox(home_desktop, window, session) == 0, session.stderr
    assert wait_gone(home_cloudify, timeout=45) == {}


def test_a_slow_cluster_runs_the_installed_firefox_locally_and_says_why(
        home_link: netlab.Netlab, home_cloudify: HomeCloudify, home_desktop: Any, tmp_path: Path) -> None:
    home_link.home_link(True)
    home_link.slow_api(2.0)
    # The desktop's own Firefox (firefox-esr, a localenv package), with a profile of its own.
    home = tmp_path / "home"
    home.mkdir()
    session = home_cloudify.start("firefox", env={"HOME": str(home),
                                                  "KOD_CLOUDIFY_LOCAL_COMMANDS": '{"firefox": ["firefox-esr"]}'})
    try:
        line = session.wait_line("running firefox locally", timeout=60)
        assert "firefox-esr" in line and "the cluster did not answer within 2 s" in line, line
        window = home_desktop.wait_for_window(LOCAL_FIREFOX, timeout=90)
        home_desktop.wait_for_content(window.box, firefox_drawn, timeout=90, what="the local Firefox drawn")
    except BaseException:
        print(session.stderr)
        raise
    shot = home_desktop.screenshot("home-fallback-local-firefox", region=window.box)
    assert firefox_drawn(shot), "the local Firefox window is not drawn"
    assert home_cloudify.leftovers() == {}, "a local run created something in the cluster"
    # The user ends it from cloudify's terminal (Ctrl-C): the local Firefox goes with it.
    session.proc.send_signal(signal.SIGINT)
    assert session.wait(timeout=60) == 130, session.stderr
    deadline = time.monotonic() + 20
    while home_desktop.find_window(LOCAL_FIREFOX) is not None:
        assert time.monotonic() < deadline, "the local Firefox is still open after cloudify ended"
        time.sleep(0.2)
