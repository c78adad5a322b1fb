"""What `cloudify sessions` and `gc` conclude about a session from its Job and its record."""

from __future__ import annotations

from datetime import UTC, datetime

from cloudify import names as n
from cloudify.sessions import SessionInfo, _info_from_job
from kod import labels


def job(**status: object) -> dict:
    return {
        "metadata": {
            "name": "kod-firefox-abc", "namespace": "kod", "creationTimestamp": "2030-01-01T00:00:00Z",
            "labels": {labels.SESSION: "abc", labels.APP: "firefox", labels.USER: "alice"},
            "annotations": {n.A_RUN_MODE: "docker", n.A_SECURE: "true", n.A_DESKTOP_HOST: "desk",
                            labels.EXPIRES_AT: "2030-01-01T12:01:10Z", n.A_PERSIST: "kod-alice-firefox-data"},
        },
        "status": status,
    }


def test_a_job_tells_the_sessions_options_and_expiry() -> None:
    info = _info_from_job(job())
    assert (info.session, info.app, info.user, info.run_mode, info.secure, info.persist, info.desktop_host) == (
        "abc", "firefox", "alice", "docker", True, "kod-alice-firefox-data", "desk")
    assert not info.expired(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    assert info.expired(datetime(2030, 1, 1, 12, 2, tzinfo=UTC))
    assert info.state() == "gone"  # no pod seen (yet)
    finished = _info_from_job(job(conditions=[{"type": "Failed", "status": "True"}]))
    assert finished.job_finished and finished.state() == "finished"


def test_a_record_without_its_cloudify_is_an_orphan() -> None:
    info = SessionInfo(session="abc", app="firefox", user="alice", namespace="kod", app_phase="Running")
    assert info.state() == "running"
    info.recorded_here, info.cli_alive = True, False
    assert info.state() == "orphaned"
    assert info.to_dict()["state"] == "orphaned"
