"""The kubelet's AtomicWriter: a content volume's files replaced as a whole, in one rename.

    with open_volume(...) as opened:                 # volume_updates.py opens it (hostfs)
        changed = write_atomically(opened.fd, files, gid=gid, dir_mode=0o755)

A content volume (Secret, ConfigMap, projected, downwardAPI) is laid out as on a kubelet:

    ..2026_12_02_21_40_00.123456789/   the payload (files and their directories)
    ..data -> ..2026_12_02_21_40_00.123456789
    <key>  -> ..data/<key>              one symlink per top-level name of the payload

An update writes the new payload into a fresh timestamped directory, points a `..data_tmp`
symlink at it and renames that over `..data` (rename(2) is atomic: a reader opening `<key>`
gets the old file or the new one, never neither), adds the symlinks of new top-level names,
removes those of names that went, then the old directory. An update whose payload equals what
`..data` holds changes nothing. A volume written before this layout existed (plain files at
the top) is converted on its first update.

Safety (docs/security.md "What a pod on your desktop gets of your machine"): containers get
these volumes read-only, but nothing here relies on it. Every call is relative to the volume's
directory descriptor (`*at` system calls), every open carries O_NOFOLLOW, no path of more than
one component is ever resolved by the kernel, and a symlink found where a directory or a file of
ours should be is refused or removed (unlinked: never followed). So a symlink planted in the
volume, `..data` pointing out of it included, can never make the writer read or write outside
the volume.

Synchronous system calls on one directory (callers run it in a thread); raises `WriteRefused`
(with why) or OSError.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DATA = "..data"
DATA_TMP = "..data_tmp"
_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WriteRefused(Exception):
    """The volume cannot be written safely (a path that is not ours, a planted object)."""


@dataclass(frozen=True)
class Payload:
    """One file to write: its bytes and permission bits."""

    data: bytes
    mode: int


def _check_path(path: str) -> list[str]:
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".") or p.startswith("..") for p in parts):
        raise WriteRefused(f"file path {path!r} must be relative, without empty, '.' or '..*' components")
    return parts


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_dir(dir_fd: int, name: str) -> int:
    try:
        return os.open(name, _DIR_READ, dir_fd=dir_fd)
    except OSError as exc:
        raise WriteRefused(f"{name} is not a plain directory of the volume: {exc.strerror}") from None


def read_payload(dir_fd: int, prefix: str = "") -> dict[str, Payload]:
    """Every regular file below `dir_fd` (symlinks and other objects are not followed, and make
    the contents differ from any payload, so they get rewritten)."""
    out: dict[str, Payload] = {}
    for entry in os.scandir(dir_fd):
        path = f"{prefix}{entry.name}"
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = _open_dir(dir_fd, entry.name)
            try:
                out.update(read_payload(sub, path + "/"))
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                with os.fdopen(os.dup(fd), "rb") as f:
                    out[path] = Payload(f.read(), stat.S_IMODE(st.st_mode))
            finally:
                os.close(fd)
        else:
            out[path] = Payload(b"\0not a regular file", -1)
    return out


def remove_tree(dir_fd: int, name: str) -> None:
    """Remove `name` below `dir_fd` (a directory's contents first), following no symlink."""
    st = _lstat(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    sub = _open_dir(dir_fd, name)
    try:
        for entry in list(os.scandir(sub)):
            remove_tree(sub, entry.name)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dir_fd)


def _current(volume_fd: int) -> str | None:
    """The timestamped directory `..data` names, or None (a volume of the old layout, or new)."""
    st = _lstat(volume_fd, DATA)
    if st is None:
        return None
    if not stat.S_ISLNK(st.st_mode):
        raise WriteRefused(f"{DATA} is not a symlink")
    target = os.readlink(DATA, dir_fd=volume_fd)
    if "/" in target or not target.startswith("..") or target in ("..", DATA, DATA_TMP):
        raise WriteRefused(f"{DATA} points to {target!r}, not to a directory of the volume's own")
    return target


def new_dir_name() -> str:
    # The kubelet's name: ..<UTC time>.<random>; made with mkdirat, so a name taken fails.
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
    return f"..{stamp}.{int.from_bytes(os.urandom(4), 'big'):010d}"


def _write_dir(volume_fd: int, name: str, files: Mapping[str, Payload], *, gid: int, dir_mode: int) -> None:
    os.mkdir(name, 0o700, dir_fd=volume_fd)
    top = _open_dir(volume_fd, name)
    try:
        for path in sorted(files):
            parts = _check_path(path)
            fd = os.dup(top)
            try:
                for part in parts[:-1]:
                    if _lstat(fd, part) is None:
                        os.mkdir(part, 0o700, dir_fd=fd)
                        sub = _open_dir(fd, part)
                        os.fchmod(sub, dir_mode)
                        os.fchown(sub, -1, gid)
                    else:
                        sub = _open_dir(fd, part)
                    os.close(fd)
                    fd = sub
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                out = os.open(parts[-1], flags, 0o600, dir_fd=fd)
                try:
                    view = memoryview(files[path].data)
                    while view:
                        view = view[os.write(out, view):]
                    os.fchmod(out, files[path].mode)
                    os.fchown(out, -1, gid)
                finally:
                    os.close(out)
            finally:
                os.close(fd)
        os.fchmod(top, dir_mode)
        os.fchown(top, -1, gid)
    finally:
        os.close(top)


def _replace_with_symlink(volume_fd: int, name: str, target: str) -> None:
    """Make `name` the symlink `target`, replacing whatever is there (a plain file by rename, so
    atomically; a directory is removed first, without following anything)."""
    st = _lstat(volume_fd, name)
    if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=volume_fd) == target:
        return
    if st is not None and stat.S_ISDIR(st.st_mode):
        remove_tree(volume_fd, name)
    tmp = f"..{name}.tmp"[:255]
    remove_tree(volume_fd, tmp)
    os.symlink(target, tmp, dir_fd=volume_fd)
    os.rename(tmp, name, src_dir_fd=volume_fd, dst_dir_fd=volume_fd)


def _top_names(paths: Iterable[str]) -> set[str]:
    return {p.split("/", 1)[0] for p in paths}


def write_atomically(volume_fd: int, files: Mapping[str, Payload], *, gid: int = 0, dir_mode: int = 0o755) -> bool:
    """Make the volume at `volume_fd` (a directory descriptor) hold exactly `files`; False when
    it held them already. See the module docstring for the steps and their safety."""
    for path in files:
        _check_path(path)
    old = _current(volume_fd)
    if old is not None:
        old_fd = _open_dir(volume_fd, old)
        try:
            old_files = read_payload(old_fd)
        finally:
            os.close(old_fd)
        if old_files == dict(files):
            return False
        old_names = _top_names(old_files)
    else:
        # The old layout's files are the top level's plain entries, the `..*` ones excepted.
        old_names = {e.name for e in os.scandir(volume_fd) if not e.name.startswith("..")}
    new = new_dir_name()
    try:
        _write_dir(volume_fd, new, files, gid=gid, dir_mode=dir_mode)
        remove_tree(volume_fd, DATA_TMP)
        os.symlink(new, DATA_TMP, dir_fd=volume_fd)
        os.rename(DATA_TMP, DATA, src_dir_fd=volume_fd, dst_dir_fd=volume_fd)
    except BaseException:
        remove_tree(volume_fd, new)
        raise
    new_names = _top_names(files)
    for name in sorted(new_names):
        _replace_with_symlink(volume_fd, name, f"{DATA}/{name}")
    for name in sorted(old_names - new_names):
        remove_tree(volume_fd, name)
    if old is not None:
        remove_tree(volume_fd, old)
    return True
