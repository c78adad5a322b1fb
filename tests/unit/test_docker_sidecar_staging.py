"""Staging mounts on the real kernel (root only): the staged path shows exactly the inode that was
checked, also after the original path is swapped for a symlink; read-only staging is read-only;
release and collect unmount and remove only the staging entries, never what they showed."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecars.docker.hostfs import open_host_path
from sidecars.docker.staging import Staging, StagingError, mount_points

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


@pytest.fixture
def staging(tmp_path: Path) -> Iterator[Staging]:
    st = Staging(tmp_path / "run" / "staging")
    st.prepare()
    yield st
    for uid in st.uids():
        st.release(uid)
    st.close()
    assert not any(m.startswith(str(tmp_path)) for m in mount_points())


@pytest.fixture
def host(tmp_path: Path) -> Path:
    d = tmp_path / "host"
    d.mkdir(mode=0o755)
    return d


def test_the_root_is_private_root_only_and_a_mount_of_its_own(staging: Staging) -> None:
    assert oct(staging.root.stat().st_mode & 0o777) == "0o700"
    assert str(staging.root) in mount_points()
    line = next(x for x in open("/proc/self/mountinfo").read().splitlines() if x.split()[4] == str(staging.root))
    assert "shared:" not in line and "master:" not in line  # private: nothing propagates in or out


def test_a_staged_directory_stays_the_checked_one_when_the_path_is_swapped(staging: Staging, host: Path, tmp_path: Path) -> None:
    real = host / "share"
    real.mkdir()
    (real / "mine").write_text("checked")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "shadow").write_text("root only")
    with open_host_path(str(real), expect="directory", trusted=()) as opened:
        # The attack: between the check and the mount, the path becomes a symlink elsewhere.
        real.rename(host / "moved")
        real.symlink_to(secret)
        path = staging.stage("pod-1", "host/share", opened, read_only=True)
    assert os.listdir(path) == ["mine"]
    assert Path(path, "mine").read_text() == "checked"
    with pytest.raises(OSError):
        Path(path, "new").write_text("x")  # read-only
    assert staging.stage("pod-1", "host/share", open_host_path(str(host / "moved"), expect="directory", trusted=()),
                         read_only=True) == path  # same inode again: the same staged mount


def test_a_staged_socket_still_answers_and_writable_staging_is_writable(staging: Staging, host: Path) -> None:
    sock = host / "native"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    server.listen(1)
    try:
        with open_host_path(str(sock), expect="socket", trusted=()) as opened:
            path = staging.stage("pod-2", "host/pulse", opened, read_only=True)
        client = socket.socket(socket.AF_UNIX)
        # Through an O_PATH descriptor: the staged path under a test's tmp_path can exceed
        # sun_path's 108 bytes. Connecting needs no write access to the mount.
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            client.connect(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
            client.close()
    finally:
        server.close()
    rw = host / "rw"
    rw.mkdir()
    with open_host_path(str(rw), expect="directory", trusted=()) as opened:
        path = staging.stage("pod-2", "host/rw", opened, read_only=False)
    Path(path, "f").write_text("ok")
    assert (rw / "f").read_text() == "ok"


def test_release_unmounts_and_removes_only_the_staging_entries(staging: Staging, host: Path) -> None:
    d = host / "keep"
    d.mkdir()
    (d / "data").write_text("precious")
    with open_host_path(str(d), expect="directory", trusted=()) as opened:
        path = staging.stage("pod-3", "host/keep", opened, read_only=False)
    assert path in mount_points()
    assert staging.release("pod-3")
    assert path not in mount_points() and not staging.pod_dir("pod-3").exists()
    assert (d / "data").read_text() == "precious"


def test_collect_releases_pods_that_are_gone_and_keeps_the_others(staging: Staging, host: Path) -> None:
    d = host / "x"
    d.mkdir()
    for uid in ("alive", "gone"):
        with open_host_path(str(d), expect="directory", trusted=()) as opened:
            staging.stage(uid, "host/x", opened, read_only=True)
    assert staging.collect({"alive"}) == ["gone"]
    assert staging.uids() == ["alive"]


def test_a_root_whose_parent_others_may_write_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(StagingError, match="not safe"):
        Staging(parent / "staging").prepare()
