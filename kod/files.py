"""Private files: written whole or not at all, readable only by their owner.

Every secret or config a component writes (tokens, keys, kubeconfigs, certificates, PID records)
goes through `write_private`: the data goes to a temporary file made with mode 0600 in the same
directory (never world-readable, not even for an instant), is flushed, and is renamed over the
target, so a reader sees the old contents or the new ones, never half of them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: str | bytes, *, mode: int = 0o600, dir_mode: int = 0o700,
                  unchanged_ok: bool = False) -> bool:
    """Write `data` to `path` atomically with `mode` (parents made with `dir_mode`). With
    `unchanged_ok`, a file that already holds exactly `data` is left alone (only its mode is
    fixed). Returns True when the file was written."""
    raw = data.encode() if isinstance(data, str) else data
    path = Path(path)
    if unchanged_ok:
        try:
            if path.read_bytes() == raw:
                os.chmod(path, mode)
                return False
        except FileNotFoundError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def create_private(path: Path, data: str | bytes, *, mode: int = 0o600) -> bool:
    """Create `path` with `data` only if it does not exist (O_EXCL: two processes racing to
    create it never both win, and an existing file or symlink is never followed). Returns False
    when it existed."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    return True
