"""The command line: complete --help, and `status` on a machine where nothing was set up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localenv", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=60)


@pytest.mark.parametrize(("command", "options"), [
    ("up", ["--demo"]), ("down", ["--wipe", "--docker", "--demo"]), ("status", ["--json"]), ("images", []),
])
def test_every_subcommand_documents_its_options(command: str, options: list[str]) -> None:
    out = _run(command, "--help").stdout
    for option in options:
        assert option in out


def test_status_of_an_empty_data_dir_says_not_up_and_lists_the_paths(tmp_path: Path) -> None:
    proc = _run("status", "--json", env={"KOD_LOCALENV_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 3
    st = json.loads(proc.stdout)
    assert st["up"] is False
    assert not any(d["running"] for d in st["daemons"].values())
    assert st["paths"]["admin_kubeconfig"] == str(tmp_path / "cluster/admin.kubeconfig")
    assert st["paths"]["kubectl"] == str(tmp_path / "bin/kubectl")
    assert st["node_name"] == "kod-worker"


def test_a_bad_setting_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    proc = _run("status", env={"KOD_LOCALENV_NODE_CIDR_MASK": "not-a-number"})
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
