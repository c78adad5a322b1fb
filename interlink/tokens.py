"""Bearer tokens from files: read them safely, create interlink's own on first start.

A token file holds one line. It must not be readable by group or others (mode 0600): a token
that other local users can read lets them run containers on this desktop.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from pydantic import SecretStr

from kod import errors
from kod.log import get_logger

log = get_logger(__name__)


def read_token_file(path: Path) -> str:
    """The token in `path`. Raises InvalidInput when it is missing, empty or too open."""
    try:
        info = path.stat()
        text = path.read_text().strip()
    except FileNotFoundError as exc:
        raise errors.InvalidInput(f"token file {path} does not exist") from exc
    except OSError as exc:
        raise errors.InvalidInput(f"cannot read token file {path}: {exc.strerror}") from exc
    if info.st_mode & 0o077:
        raise errors.InvalidInput(
            f"token file {path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o})",
            hint=f"run `chmod 600 {path}`",
        )
    if not text:
        raise errors.InvalidInput(f"token file {path} is empty")
    return text


def create_token_file(path: Path) -> str:
    """Write a new random token to `path` (mode 0600, parent 0700) and return it. Never
    overwrites: if another process created the file first, its token wins."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token_file(path)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("created a new token file", path=str(path))
    return token


def resolve_token(token: SecretStr | None, token_file: Path | None, *, create: bool = False) -> str | None:
    """The token given inline, else the file's (created when missing and `create`), else None."""
    if token is not None:
        value = token.get_secret_value().strip()
        if not value:
            raise errors.InvalidInput("the token given is empty")
        return value
    if token_file is None:
        return None
    if create and not token_file.exists():
        return create_token_file(token_file)
    return read_token_file(token_file)
