"""Reading a job's own files as the root sidecar: never through a symlink, never someone else's.

The job's directory (`<work_dir>/jobs/<pod uid>`) belongs to the job's user, and so does all
that the script writes there (state/, logs/): that user (another job of theirs, a shell on the
site, or a container that got out of its sandbox) may replace any entry by a symlink, a FIFO or
a hard link at any moment. The sidecar runs as root, so every read goes through descriptors:

    with JobFiles.open(job_dir) as files:       # the job's directory, O_NOFOLLOW
        names = files.names("state")             # [] when missing or refused
        text = files.read_small("state", "main.0.exit")
        fd = files.open_file("logs", "main.0.log")    # a descriptor of a regular file, or None

Each step is `openat(parent_fd, name, O_NOFOLLOW)`, so the kernel never resolves a symlink for
us, and what is checked (fstat of the open descriptor: a regular file or directory, owned by the
job directory's owner) is exactly what is then read: no race between a check and the use. The
job's directory itself lies in `jobs/`, which is root's: its path cannot be swapped.
`O_NONBLOCK` makes a FIFO planted in place of a file refused instead of hanging the poller.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from types import TracebackType

from kod.log import get_logger

log = get_logger(__name__)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
#: What the script writes to state/ is a line of a few numbers.
SMALL = 4096


class JobFiles:
    """An open job directory; `owner` is its owner's uid (the job's user)."""

    def __init__(self, fd: int, owner: int, path: Path) -> None:
        self.fd = fd
        self.owner = owner
        self.path = path

    @classmethod
    def open(cls, job_dir: Path) -> JobFiles | None:
        """The job's directory, or None when it is missing or is not a directory."""
        try:
            fd = os.open(job_dir, _DIR)
        except OSError:
            return None
        return cls(fd, os.fstat(fd).st_uid, job_dir)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> JobFiles:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _refused(self, what: str, why: str) -> None:
        log.warning("refused a file of the job's directory", path=f"{self.path}/{what}", reason=why)

    def _open_sub(self, sub: str) -> int | None:
        try:
            fd = os.open(sub, _DIR, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self._refused(sub, "not a directory (a symlink?)")
            return None
        if os.fstat(fd).st_uid != self.owner:
            os.close(fd)
            self._refused(sub, "not owned by the job's user")
            return None
        return fd

    def names(self, sub: str) -> list[str]:
        """The entries of `sub` (state or logs); [] when it is missing or refused."""
        fd = self._open_sub(sub)
        if fd is None:
            return []
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def open_file(self, sub: str, name: str) -> int | None:
        """A read-only descriptor of the regular file `sub/name` owned by the job's user; None when
        it is missing or is anything else (a symlink, a FIFO, a device, someone else's file: a hard
        link to it). The caller closes it."""
        if "/" in name or name in ("", ".", ".."):
            return None
        dir_fd = self._open_sub(sub)
        if dir_fd is None:
            return None
        try:
            fd = os.open(name, _FILE, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._refused(f"{sub}/{name}", "a symlink")
            return None
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != self.owner:
            os.close(fd)
            self._refused(f"{sub}/{name}", "not a regular file of the job's user")
            return None
        return fd

    def read_small(self, sub: str, name: str, limit: int = SMALL) -> str | None:
        """The text of a small file (at most `limit` bytes read), or None."""
        fd = self.open_file(sub, name)
        if fd is None:
            return None
        try:
            return os.read(fd, limit).decode(errors="replace")
        except OSError:
            return None
        finally:
            os.close(fd)


def tail(fd: int, lines: int, *, block: int = 65536) -> tuple[bytes, int]:
    """The last `lines` lines of the open file `fd` and its size, reading backwards from the end
    (a long log is not read whole for `--tail`)."""
    size = os.fstat(fd).st_size
    if lines <= 0:
        return b"", size
    data = b""
    pos = size
    while pos > 0 and data.count(b"\n") <= lines:
        step = min(block, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept), size
