"""Bearer tokens from files: read them safely, create a server's own on first start.

A token file holds one line. It must not be readable by group or others (mode 0600): a token
that other local users can read lets them run containers on this desktop.

    token = tokens.server_token(settings.token, settings.token_file, create=settings.create_token)
    client_token = tokens.resolve_token(None, settings.interlink.token_file)   # None: no auth
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


def read_token_file(path: Path, *, strict: bool = True) -> str:
    """The token in `path`. Raises InvalidInput when it is missing, unreadable or empty, and,
    when `strict`, when group or others may read it; otherwise that is only warned about (a
    Kubernetes Secret volume is group-readable by the pod's fsGroup)."""
    try:
        info = path.stat()
        text = path.read_text().strip()
    except FileNotFoundError as exc:
        raise errors.InvalidInput(f"token file {path} does not exist") from exc
    except OSError as exc:
        raise errors.InvalidInput(f"cannot read token file {path}: {exc.strerror}") from exc
    if info.st_mode & 0o077:
        mode = f"{stat.S_IMODE(info.st_mode):o}"
        if strict:
            raise errors.InvalidInput(
                f"token file {path} is readable by other users (mode {mode})", hint=f"run `chmod 600 {path}`"
            )
        log.warning("token file is readable by others; chmod 600 it", path=str(path), mode=mode)
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


def _inline(token: SecretStr) -> str:
    value = token.get_secret_value().strip()
    if not value:
        raise errors.InvalidInput("the token given is empty")
    return value


def resolve_token(token: SecretStr | None, token_file: Path | None, *, strict: bool = True) -> str | None:
    """The token a client sends: the one given inline, else the file's, else None (no auth)."""
    if token is not None:
        return _inline(token)
    if token_file is None:
        return None
    return read_token_file(token_file, strict=strict)


def server_token(token: SecretStr | None, token_file: Path, *, create: bool, strict: bool = True) -> str:
    """The token a server requires: the one given inline, else the file's, created with a random
    token when missing and `create`. Raises InvalidInput saying what to do when there is none."""
    if token is not None:
        return _inline(token)
    if not token_file.exists():
        if not create:
            raise errors.InvalidInput(
                f"token file {token_file} does not exist", hint="create it, or set create_token = true"
            )
        return create_token_file(token_file)
    return read_token_file(token_file, strict=strict)
