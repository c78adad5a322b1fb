"""Nothing outlives a session: after Ctrl-C, after `cloudify stop`, and after a kill -9 of the CLI
once `cloudify gc` ran."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.e2e.cloudify_support import Cloudify, cloudify, cloudify_images, docker_containers, wait_gone  # noqa: F401
from tests.e2e.test_cloudify_session import see_firefox

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", ["pod", "docker"])
def test_kill_9_then_gc_leaves_nothing(cloudify: Cloudify, desktop: Any, mode: str) -> None:
    session, _ = see_firefox(cloudify, desktop, f"kill9-{mode}", "-r", mode)
    sid = session.session_id
    session.proc.send_signal(signal.SIGKILL)
    session.proc.wait()
    listed = {s["session"]: s for s in cloudify.sessions()}
    assert listed[sid]["state"] == "orphaned"
    assert cloudify.leftovers(), "the killed session's objects should still be there before gc"
    out = cloudify.run("gc", check=True)
    assert f"removed session {sid}" in out.stdout
    assert wait_gone(cloudify, timeout=30) == {}
    assert docker_containers(f"io.kod.session={sid}") == []
    assert cloudify.sessions() == []


def test_ctrl_c_and_stop_clean_up(cloudify: Cloudify, desktop: Any) -> None:
    session, _ = see_firefox(cloudify, desktop, "ctrl-c")
    session.proc.send_signal(signal.SIGINT)
    assert session.wait() == 130
    assert wait_gone(cloudify, timeout=10) == {}

    session, _ = see_firefox(cloudify, desktop, "stop")
    out = cloudify.run("stop", session.session_id, check=True)
    assert "ended by its cloudify" in out.stdout
    assert session.wait() == 128 + signal.SIGTERM
    assert wait_gone(cloudify, timeout=10) == {}


def test_the_cluster_side_expires_on_its_own(cloudify: Cloudify, desktop: Any) -> None:
    """Without any cloudify: the app gives up when no viewer connects (-t), its Job finishes and
    the cluster deletes it with everything it owns."""
    session = cloudify.start("-t", "8", "--reach", "port-forward", "firefox")
    session.wait_line("prepare", timeout=60)
    session.proc.send_signal(signal.SIGKILL)  # the viewer reaches the app through the dead CLI: never
    session.proc.wait()
    assert wait_gone(cloudify, timeout=90) == {}, "the cluster did not expire the abandoned session"


def test_the_next_run_collects_what_a_killed_cloudify_left(cloudify: Cloudify, desktop: Any) -> None:
    killed, _ = see_firefox(cloudify, desktop, "next-run-1")
    old = killed.session_id
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait()
    assert cloudify.kubectl_json("get", "jobs", "-n", cloudify.namespace, "-l", f"kod.io/session={old}")["items"]
    nxt = cloudify.start("-r", "docker", "firefox")
    nxt.wait_line(f"removed the leftovers of session {old}", timeout=120)
    assert cloudify.kubectl_json("get", "pods,jobs,services,secrets", "-n", cloudify.namespace,
                                 "-l", f"kod.io/session={old}")["items"] == []
    assert docker_containers(f"io.kod.pod.namespace={cloudify.namespace}") == []  # the old viewer pod's container
    nxt.proc.send_signal(signal.SIGINT)
    assert nxt.wait() == 130
    assert wait_gone(cloudify, timeout=30) == {}
