"""This desktop's record of its running sessions: one small JSON file per session, locked by the
cloudify process that runs it.

The lock (flock) is the liveness signal: the kernel releases it when the process dies, however it
dies (kill -9 included), so a record whose lock can be taken belongs to a dead cloudify and its
leftovers may be collected. No pid files to go stale, no pid reuse to fool it. The record is
written before anything is created, so a crash at any point leaves something to find.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SessionRecord:
    session: str
    app: str
    user: str
    namespace: str
    run_mode: str
    protocol: str
    secure: bool
    persist: bool
    started: str
    pid: int
    context: str | None = None
    #: Local Docker containers of the session (-r docker).
    containers: list[str] = field(default_factory=list)
    #: Private files of the session (native mode keys), removed by gc.
    paths: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SessionRecord:
        data: dict[str, Any] = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class HeldRecord:
    """A record this process owns: locked while open."""

    def __init__(self, path: Path, fd: int, record: SessionRecord) -> None:
        self.path, self._fd, self.record = path, fd, record

    def save(self) -> None:
        """Rewrite the record (e.g. after a container was created)."""
        data = self.record.to_json().encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self, *, remove: bool = True) -> None:
        """Drop the lock; remove the record when the session was cleaned up."""
        if self._fd < 0:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = -1


class Registry:
    """The directory of session records."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def hold(self, record: SessionRecord) -> HeldRecord:
        """Create and lock the record of a new session."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.dir / f"{record.session}.json"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = HeldRecord(path, fd, record)
        held.save()
        return held

    def records(self) -> Iterator[tuple[SessionRecord, bool]]:
        """Every record, with whether its cloudify still runs."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.json")):
            try:
                record = SessionRecord.from_json(path.read_text())
            except (OSError, ValueError, TypeError):
                continue
            yield record, self.alive(path)

    def alive(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    @contextlib.contextmanager
    def claim(self, session: str) -> Iterator[SessionRecord | None]:
        """Lock a dead session's record while its leftovers are collected (so that two `gc`s do
        not collect it twice); yields None when it is alive or already gone. The record is
        removed when the block ends without an error."""
        path = self.dir / f"{session}.json"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            try:
                record = SessionRecord.from_json(path.read_text())
            except (OSError, ValueError, TypeError):
                record = None
            yield record
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        finally:
            os.close(fd)

    def is_running_here(self, session: str) -> bool:
        return self.alive(self.dir / f"{session}.json")
