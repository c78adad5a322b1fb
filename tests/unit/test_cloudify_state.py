"""The local session records: their lock says whether the cloudify that runs a session lives,
even after a kill -9 (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from cloudify.state import Registry, SessionRecord


def record(sid: str = "s1") -> SessionRecord:
    return SessionRecord(session=sid, app="firefox", user="u", namespace="kod", run_mode="pod", protocol="vnc",
                         secure=False, persist=False, started="2030-01-01T00:00:00Z", pid=os.getpid())


def test_a_held_record_is_alive_and_released_records_vanish(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "sessions")
    held = reg.hold(record())
    assert [(r.session, alive) for r, alive in reg.records()] == [("s1", True)]
    assert oct((tmp_path / "sessions" / "s1.json").stat().st_mode & 0o777) == "0o600"
    with reg.claim("s1") as claimed:
        assert claimed is None  # alive: not collectable
    held.release()
    assert list(reg.records()) == []


def test_a_killed_cloudify_leaves_a_record_that_gc_can_claim(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    code = (
        "import sys, time; from pathlib import Path; from cloudify.state import Registry, SessionRecord;"
        f"r = Registry(Path({str(directory)!r})); r.hold(SessionRecord(session='k9', app='firefox', user='u', "
        "namespace='kod', run_mode='docker', protocol='vnc', secure=False, persist=False, started='x', pid=0, "
        "containers=['c1'])); print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    reg = Registry(directory)
    assert [alive for _, alive in reg.records()] == [True]
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert [alive for _, alive in reg.records()] == [False]
    with reg.claim("k9") as claimed:
        assert claimed is not None and claimed.containers == ["c1"]
    assert list(reg.records()) == []  # claimed and collected: the record is gone
