"""`python -m localenv up` is idempotent: run again on a running environment, it finds every
daemon in place and starts nothing (the PIDs stay the same)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from localenv.handle import ClusterHandle

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _localenv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localenv", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def _pids() -> dict[str, int | None]:
    proc = _localenv("status", "--json")
    status = json.loads(proc.stdout)
    assert status["up"], proc.stdout
    return {name: d["pid"] for name, d in status["daemons"].items()}


def test_a_second_up_finds_everything_running_and_starts_nothing(cluster: ClusterHandle) -> None:
    if cluster.reused:
        pytest.skip("a reused cluster (KUBECONFIG) is not managed by localenv")
    before = _pids()
    assert all(before.values()), before

    proc = _localenv("up")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started (" not in proc.stdout and "restarted" not in proc.stdout, proc.stdout
    for name, pid in before.items():
        assert f"already running (pid {pid})" in proc.stdout, name
    assert _pids() == before
