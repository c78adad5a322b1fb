"""localenv.procs starts a daemon once, restarts it when its configuration changes, and stops
only the process its PID file names while that process still runs the recorded command."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from kod import errors
from localenv import procs

SLEEPER = "import sys, time; open(sys.argv[1] + '.ready', 'w').write('x'); time.sleep(600)"


def _daemon(tmp_path: Path, config: str = "a", **kw: object) -> procs.Daemon:
    marker = tmp_path / "marker"
    return procs.Daemon(
        name="sleeper",
        argv=(sys.executable, "-c", SLEEPER, str(marker)),
        run_dir=tmp_path / "run",
        logs_dir=tmp_path / "logs",
        files={tmp_path / "sleeper.conf": config},
        ready=lambda: (tmp_path / "marker.ready").exists(),
        ready_timeout=10,
        **kw,  # type: ignore[arg-type]
    )


def _alive(pid: int) -> bool:
    return procs._cmdline(pid) is not None


def test_ensure_starts_once_and_a_second_ensure_keeps_the_same_process(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    try:
        outcome, pid = procs.ensure(d)
        assert outcome == "started" and _alive(pid)
        assert (tmp_path / "sleeper.conf").read_text() == "a"
        assert procs.ensure(d) == ("running", pid)
    finally:
        procs.stop(d)
    assert not _alive(pid)
    assert not d.pid_file.exists()


def test_a_changed_config_file_restarts_the_daemon(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    try:
        _, pid = procs.ensure(d)
        outcome, new_pid = procs.ensure(_daemon(tmp_path, config="b"))
        assert outcome == "restarted" and new_pid != pid
        assert not _alive(pid) and _alive(new_pid)
        assert (tmp_path / "sleeper.conf").read_text() == "b"
    finally:
        procs.stop(d)


def test_a_recycled_pid_running_another_program_is_never_signalled(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    d.pid_file.parent.mkdir(parents=True)
    # The PID file names this very test process, which runs another command line.
    d.pid_file.write_text(json.dumps({"pid": os.getpid(), "argv": list(d.argv), "fingerprint": "x",
                                      "started_at": time.time()}))
    assert procs.running_pid(d.pid_file) is None
    assert procs.stop(d) is None  # and we are still here to assert it


def test_a_daemon_that_exits_at_once_fails_with_the_end_of_its_log(tmp_path: Path) -> None:
    d = procs.Daemon(name="broken", argv=(sys.executable, "-c", "print('bad flag --x'); raise SystemExit(2)"),
                     run_dir=tmp_path, logs_dir=tmp_path, ready=lambda: False, ready_timeout=10)
    with pytest.raises(errors.Unavailable) as exc:
        procs.start(d)
    assert "bad flag --x" in str(exc.value) and "exited" in str(exc.value)


def test_a_daemon_is_restarted_when_the_code_it_runs_changed(tmp_path: Path) -> None:
    code = tmp_path / "pkg"
    code.mkdir()
    (code / "mod.py").write_text("X = 1\n")
    d = _daemon(tmp_path, code=(code,))
    try:
        _, first = procs.ensure(d)
        assert procs.ensure(d) == ("running", first)
        (code / "mod.py").write_text("X = 2\n")
        outcome, second = procs.ensure(d)
        assert outcome == "restarted" and second != first
        assert not _alive(first)
    finally:
        procs.stop(d)
