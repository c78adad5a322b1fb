"""The kubelet's AtomicWriter in the Docker sidecar (sidecars/docker/atomic_writer.py), on a real
directory: an update swaps the whole payload in one rename, removes what went, and no symlink
planted in the volume makes it read or write outside the volume."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecars.docker import volumes
from sidecars.docker.atomic_writer import DATA, Payload, WriteRefused, write_atomically


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    vol = tmp_path / "vol"
    vol.mkdir()
    fd = os.open(vol, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield vol, fd
    finally:
        os.close(fd)


def _write(fd: int, files: dict[str, bytes], mode: int = 0o644) -> bool:
    return write_atomically(fd, {k: Payload(v, mode) for k, v in files.items()})


def test_an_update_replaces_the_files_through_one_data_symlink(volume: tuple[Path, int]) -> None:
    vol, fd = volume
    assert _write(fd, {"a": b"1", "d/b": b"2", "gone": b"x"})
    first = os.readlink(vol / DATA)
    assert (vol / "a").read_bytes() == b"1" and (vol / "d" / "b").read_bytes() == b"2"
    assert os.readlink(vol / "a") == "..data/a"

    assert _write(fd, {"a": b"new", "d/b": b"2", "added": b"+"}, mode=0o400)
    second = os.readlink(vol / DATA)
    assert second != first and not (vol / first).exists(), "the old payload is removed"
    assert (vol / "a").read_bytes() == b"new" and (vol / "added").read_bytes() == b"+"
    assert not os.path.lexists(vol / "gone"), "a file the new payload lacks goes"
    assert (os.stat(vol / "a").st_mode & 0o777) == 0o400
    assert sorted(os.listdir(vol)) == sorted([DATA, second, "a", "d", "added"])


def test_the_same_payload_again_changes_nothing(volume: tuple[Path, int]) -> None:
    vol, fd = volume
    _write(fd, {"a": b"1"})
    before = os.readlink(vol / DATA)
    assert not _write(fd, {"a": b"1"})
    assert os.readlink(vol / DATA) == before
    assert _write(fd, {"a": b"1"}, mode=0o600), "a mode change is a change"


def test_a_volume_of_the_old_layout_is_converted(volume: tuple[Path, int]) -> None:
    vol, fd = volume
    (vol / "a").write_bytes(b"old")
    (vol / "dir").mkdir()
    (vol / "dir" / "x").write_bytes(b"old")
    assert _write(fd, {"a": b"new"})
    assert os.readlink(vol / "a") == "..data/a" and (vol / "a").read_bytes() == b"new"
    assert not os.path.lexists(vol / "dir")


def test_an_empty_payload_leaves_an_empty_volume(volume: tuple[Path, int]) -> None:
    # An optional ConfigMap deleted: the kubelet writes an empty payload.
    vol, fd = volume
    _write(fd, {"a": b"1"})
    assert _write(fd, {})
    assert sorted(os.listdir(vol)) == sorted([DATA, os.readlink(vol / DATA)])


def test_planted_symlinks_are_never_followed(volume: tuple[Path, int], tmp_path: Path) -> None:
    vol, fd = volume
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a").write_bytes(b"host file")
    _write(fd, {"a": b"1", "d/b": b"2"})
    # What a container that could write its volume would plant: a top-level name, the temporary
    # link and the old payload's own directory replaced by links out of the volume.
    (vol / "a").unlink()
    (vol / "a").symlink_to(outside / "a")
    (vol / "..data_tmp").symlink_to(outside)
    old = os.readlink(vol / DATA)
    os.rename(vol / old, vol / "..moved")
    (vol / old).symlink_to(outside)
    with pytest.raises(WriteRefused):
        _write(fd, {"a": b"evil"})  # the payload named by ..data is a symlink: refused, not read
    (vol / old).unlink()
    os.rename(vol / "..moved", vol / old)
    assert _write(fd, {"a": b"2", "d/b": b"3"})
    assert (outside / "a").read_bytes() == b"host file" and sorted(os.listdir(outside)) == ["a"]
    assert os.readlink(vol / "a") == "..data/a" and (vol / "a").read_bytes() == b"2"
    assert not os.path.lexists(vol / "..data_tmp")


def test_data_pointing_out_of_the_volume_is_refused(volume: tuple[Path, int], tmp_path: Path) -> None:
    vol, fd = volume
    (vol / DATA).symlink_to(tmp_path)
    with pytest.raises(WriteRefused):
        _write(fd, {"a": b"1"})
    assert os.listdir(tmp_path) == ["vol"] and os.listdir(vol) == [DATA]


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "..data/x", "a/../b", "a//b"])
def test_paths_that_leave_the_payload_are_refused(volume: tuple[Path, int], path: str) -> None:
    _, fd = volume
    with pytest.raises(WriteRefused):
        _write(fd, {path: b"x"})


def test_population_and_updates_give_files_the_same_modes() -> None:
    from kod import wire

    rv = wire.ResolvedVolume(name="s", defaultMode=0o400, files=[wire.FileItem(path="k", data="dg=="),
                                                                 wire.FileItem(path="m", data="", mode=0o600)])
    assert volumes.payload(rv, fs_group=None) == {"k": Payload(b"v", 0o400), "m": Payload(b"", 0o600)}
    assert volumes.payload(rv, fs_group=2000)["k"].mode == 0o440
