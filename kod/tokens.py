"""Bearer tokens from files: read them safely, create a server's own on first start.

A token file holds one line. It must not be readable by group or others (mode 0600): a token
that other local users can read lets them run containers on this desktop. Every component refuses
such a file (`chmod 600` is the fix it names); the one exception, asked for by name, is a file
that only a group may read (`allow_group`), never others: a Kubernetes Secret volume is
group-readable by the pod's fsGroup, whose only member is the pod (vk_bridge in the cluster).

    token = tokens.server_token(settings.token, settings.token_file, create=settings.create_token)
    client_token = tokens.resolve_token(None, settings.interlink.token_file)   # None: no auth
"""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

from pydantic import SecretStr

from kod import errors
from kod.files import create_private
from kod.log import get_logger

log = get_logger(__name__)


def check_private(path: Path, *, what: str = "token file", allow_group: bool = False) -> None:
    """Raise InvalidInput (with the `chmod 600` fix) when others may read `path`, or its group
    may unless `allow_group`. Missing files pass: the caller's read says so."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    loose = mode & (0o007 if allow_group else 0o077)
    if loose:
        who = "other users" if mode & 0o007 else "its group"
        raise errors.InvalidInput(
            f"{what} {path} is readable by {who} (mode {mode:o}): refusing to use it",
            hint=f"run `chmod 600 {path}`",
        )


def read_token_file(path: Path, *, allow_group: bool = False) -> str:
    """The token in `path`. Raises InvalidInput when it is missing, unreadable or empty, or when
    others may read it, or its group may (unless `allow_group`: a Secret volume's fsGroup)."""
    try:
        info = path.stat()
        text = path.read_text().strip()
    except FileNotFoundError as exc:
        raise errors.InvalidInput(f"token file {path} does not exist") from exc
    except OSError as exc:
        raise errors.InvalidInput(f"cannot read token file {path}: {exc.strerror}") from exc
    if info.st_mode & 0o077:
        check_private(path, allow_group=allow_group)
    if not text:
        raise errors.InvalidInput(f"token file {path} is empty")
    return text


def create_token_file(path: Path) -> str:
    """Write a new random token to `path` (mode 0600, parent 0700) and return it. Never
    overwrites: if another process created the file first, its token wins."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    if not create_private(path, token + "\n"):
        return read_token_file(path)
    log.info("created a new token file", path=str(path))
    return token


def _inline(token: SecretStr) -> str:
    value = token.get_secret_value().strip()
    if not value:
        raise errors.InvalidInput("the token given is empty")
    return value


def resolve_token(token: SecretStr | None, token_file: Path | None, *, allow_group: bool = False) -> str | None:
    """The token a client sends: the one given inline, else the file's, else None (no auth)."""
    if token is not None:
        return _inline(token)
    if token_file is None:
        return None
    return read_token_file(token_file, allow_group=allow_group)


def server_token(token: SecretStr | None, token_file: Path, *, create: bool) -> str:
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
    return read_token_file(token_file)
