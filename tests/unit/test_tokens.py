"""Token files: private, created once, refused (or warned about) when others can read them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from kod import errors, tokens


def test_a_created_token_is_random_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "kod" / "x.token"
    token = tokens.create_token_file(path)
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert tokens.create_token_file(path) == token


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_token_file_others_can_read_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "x.token"
    path.write_text("abc\n")
    path.chmod(mode)
    with pytest.raises(errors.InvalidInput, match=f"chmod 600 {path}"):
        tokens.read_token_file(path)
    with pytest.raises(errors.InvalidInput, match=f"chmod 600 {path}"):
        tokens.server_token(None, path, create=True)


def test_only_a_group_readable_file_passes_when_asked_for_by_name(tmp_path: Path) -> None:
    path = tmp_path / "x.token"
    path.write_text("abc\n")
    path.chmod(0o440)  # a Secret volume with fsGroup
    assert tokens.read_token_file(path, allow_group=True) == "abc"
    path.chmod(0o644)  # others: never
    with pytest.raises(errors.InvalidInput, match="other users"):
        tokens.read_token_file(path, allow_group=True)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_token_file_is_invalid_input(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.token"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(errors.InvalidInput, match="is empty"):
        tokens.read_token_file(path)


def test_a_server_without_token_file_or_create_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidInput, match="create_token = true"):
        tokens.server_token(None, tmp_path / "missing.token", create=False)


def test_an_inline_token_wins_and_must_not_be_empty(tmp_path: Path) -> None:
    assert tokens.server_token(SecretStr(" t "), tmp_path / "missing.token", create=False) == "t"
    assert tokens.resolve_token(None, None) is None
    with pytest.raises(errors.InvalidInput, match="empty"):
        tokens.resolve_token(SecretStr(" "), None)
