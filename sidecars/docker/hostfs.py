"""Opening host paths so that nothing a pod or another local user can change lies on the way.

    opened = open_host_path("/tmp/.X11-unix", expect="directory", trusted={0, 1000})
    try:
        ...  # bind /proc/self/fd/<opened.fd> somewhere (staging.py)
    finally:
        opened.close()

A path is walked from `/` one component at a time with `openat(O_PATH | O_NOFOLLOW)`, so the
kernel never follows a symlink for us: a symlink anywhere on the way is refused, not resolved.
What the walk holds at the end is a file descriptor of exactly the object it checked; binding that
descriptor (never the path again) makes the check and the use the same inode, whatever changes on
the path afterwards (the kubelet's answer to CVE-2017-1002101).

Checks, each with its reason in the `HostPathError` message:
- every directory on the way is a directory owned by a trusted uid (root, the sidecar's own, or
  the allow-list entry's owners): its owner could replace anything below it;
- a directory on the way that another local user can write (group or other write bit, group not
  root) is refused unless it has the sticky bit; with the sticky bit, the next component must be
  owned by a trusted uid (the sticky bit only stops users from replacing entries they do not own);
- the final object has the expected type (directory, socket, regular file, character device, or
  a directory of character devices) and a trusted owner.

`open_beneath(root_fd, relative, ...)` walks a path relative to a directory already opened (a pod
volume's root) the same way, optionally creating missing directories with `mkdirat`, and refuses
every symlink; ownership is not checked there (the pod owns its volume's contents).

Nothing here mounts or talks to Docker; everything raises `HostPathError` (and closes what it
opened) on refusal.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

#: What an allow-list entry says the object is.
Expect = Literal["directory", "socket", "file", "devices", "any-dir-or-file"]

_OPEN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class HostPathError(Exception):
    """A host path (or a path in a volume) that may not be used, and why."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.message = message
        #: The path does not exist (yet): worth trying again later, like the kubelet does.
        self.missing = missing


@dataclass
class Opened:
    """An O_PATH descriptor of the object a walk checked, with its stat."""

    fd: int
    st: os.stat_result
    path: str

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def canonical(path: str) -> bool:
    """True for an absolute path written the one plain way: no empty, '.' or '..' component and
    no trailing slash ('/' itself is canonical)."""
    if not path.startswith("/"):
        return False
    if path == "/":
        return True
    return all(part not in ("", ".", "..") for part in path[1:].split("/"))


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "an unknown kind of file"


def _others_may_write(st: os.stat_result) -> bool:
    """Local users other than the owner (and root's group) may change this directory's entries."""
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and st.st_gid != 0


def _check_dir(st: os.stat_result, where: str, trusted: frozenset[int]) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise HostPathError(f"{where} is {_kind(st.st_mode)}, not a directory")
    if st.st_uid not in trusted:
        raise HostPathError(f"{where} is owned by uid {st.st_uid}, who could replace what is below it")
    if _others_may_write(st) and not st.st_mode & stat.S_ISVTX:
        raise HostPathError(
            f"{where} may be written by other local users (mode {stat.S_IMODE(st.st_mode):o}, no sticky bit), "
            "who could replace what is below it"
        )


def _check_final(st: os.stat_result, path: str, expect: Expect, trusted: frozenset[int]) -> None:
    mode = st.st_mode
    ok = {
        "directory": stat.S_ISDIR(mode),
        "socket": stat.S_ISSOCK(mode),
        "file": stat.S_ISREG(mode),
        "devices": stat.S_ISCHR(mode) or stat.S_ISDIR(mode),
        "any-dir-or-file": stat.S_ISDIR(mode) or stat.S_ISREG(mode),
    }[expect]
    if not ok:
        wanted = {
            "directory": "a directory",
            "socket": "a socket",
            "file": "a regular file",
            "devices": "a character device or a directory of them",
            "any-dir-or-file": "a directory or a regular file",
        }[expect]
        raise HostPathError(f"{path} is {_kind(mode)}, not {wanted}")
    if st.st_uid not in trusted:
        raise HostPathError(f"{path} is owned by uid {st.st_uid}, not by a trusted user (uids {_uids(trusted)})")


def _uids(trusted: Iterable[int]) -> str:
    return ", ".join(str(u) for u in sorted(trusted))


def _open_child(dir_fd: int, name: str, shown: str) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise HostPathError(f"{shown} does not exist", missing=True) from None
    except NotADirectoryError:
        raise HostPathError(f"a parent of {shown} is not a directory") from None
    except OSError as exc:
        raise HostPathError(f"cannot open {shown}: {exc.strerror}") from None
    st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):
        os.close(fd)
        raise HostPathError(f"{shown} is a symlink; symlinks are never followed")
    return fd, st


def open_host_path(path: str, *, expect: Expect, trusted: Iterable[int]) -> Opened:
    """Open the host object at canonical absolute `path` as described in the module docstring.
    `trusted` are the uids that may own it and the directories above it (root is always trusted).
    Raises HostPathError (with `missing` set when a component does not exist)."""
    if not canonical(path):
        raise HostPathError(f"host path {path!r} is not a plain absolute path (no '.', '..', '//' or trailing '/')")
    owners = frozenset({0, *trusted})
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    st = os.fstat(fd)
    shown = "/"
    try:
        parts = [] if path == "/" else path[1:].split("/")
        for part in parts:
            _check_dir(st, shown, owners)
            parent_st = st
            child = f"{shown.rstrip('/')}/{part}"
            child_fd, st = _open_child(fd, part, child)
            os.close(fd)
            fd = child_fd
            if parent_st.st_mode & stat.S_ISVTX and _others_may_write(parent_st) and st.st_uid not in owners:
                raise HostPathError(
                    f"{child} is owned by uid {st.st_uid} in the shared directory {shown} (sticky, writable by "
                    f"every local user): another user's file, not a trusted one (uids {_uids(owners)})"
                )
            shown = child
        _check_final(st, path, expect, owners)
    except BaseException:
        os.close(fd)
        raise
    return Opened(fd=fd, st=st, path=path)


def split_relative(relative: str) -> list[str]:
    """The components of a relative path inside a volume; HostPathError for an absolute path, a
    '..' or '.' component, or an empty one."""
    parts = relative.split("/")
    if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise HostPathError(f"path {relative!r} must be relative, without '.', '..' or empty components")
    return parts


def open_beneath(
    root: Opened, relative: str, *, create_dirs: bool = False, dir_mode: int = 0o777, expect: Expect = "any-dir-or-file"
) -> Opened:
    """Open `relative` below the directory `root` (an O_PATH descriptor), one component at a time
    without following symlinks; with `create_dirs`, missing components are made as directories
    (`mkdirat`, mode `dir_mode` before the umask is cleared by a chmod). The result must be a
    directory or a regular file. `root` stays open."""
    parts = split_relative(relative)
    fd = os.dup(root.fd)
    shown = root.path
    st = root.st
    try:
        for part in parts:
            if not stat.S_ISDIR(st.st_mode):
                raise HostPathError(f"{shown} is {_kind(st.st_mode)}, not a directory")
            child = f"{shown}/{part}"
            try:
                child_fd, st = _open_child(fd, part, child)
            except HostPathError as exc:
                if not (exc.missing and create_dirs):
                    raise
                try:
                    os.mkdir(part, dir_mode, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile (by a container, perhaps a symlink): the open below decides
                else:
                    # mkdirat honours the umask; the kubelet gives subPath directories the mode asked.
                    made = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                    try:
                        os.fchmod(made, dir_mode)
                    finally:
                        os.close(made)
                child_fd, st = _open_child(fd, part, child)
            os.close(fd)
            fd = child_fd
            shown = child
        _check_final(st, shown, expect, frozenset({st.st_uid}))
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.ELOOP:
            raise HostPathError(f"{shown} is a symlink; symlinks are never followed") from None
        raise HostPathError(f"cannot open {shown}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return Opened(fd=fd, st=st, path=shown)
