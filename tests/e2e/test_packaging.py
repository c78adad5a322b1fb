"""`pip install -e .` into a fresh virtualenv, as a developer runs it: it works and prints no
warning of the build backend (setuptools, fetched by pip into its isolated build environment)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_an_editable_install_in_a_fresh_venv_prints_no_warnings(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # The project's pip (the one `make venv` installs, current), installing into the fresh venv.
    # --no-deps: the dependencies' own installs say nothing about this project's packaging.
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--no-deps", "-e", str(REPO)], capture_output=True, text=True, timeout=600, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Successfully installed kubernetes-on-desktop" in output, output
    lowered = output.lower()
    assert "warning" not in lowered and "deprecat" not in lowered, output
    # The install is usable: the fresh venv imports the project from the checkout.
    found = subprocess.run([str(venv / "bin" / "python"), "-c", "import cloudify, kod; print(kod.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60, check=True).stdout
    assert found.strip() == str(REPO / "kod" / "__init__.py")
