"""Settings objects, loaded once in `main` and passed down.

Each component declares a pydantic model (one docstring or `description` per field) and loads it
with `load_settings(Model, path, env_prefix="KOD_INTERLINK_")`: defaults, then the TOML file when
it exists, then environment variables. Environment names are the prefix plus the field name in
upper case, with `__` between nested levels: `KOD_INTERLINK_LISTEN__PORT=9000`. Lists and
dictionaries are given as JSON. Nothing below `main` reads `os.environ`.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kod import errors
from kod.http import validation_message

S = TypeVar("S", bound=BaseModel)


def config_home() -> Path:
    """The user's config directory ($XDG_CONFIG_HOME or ~/.config), for files under kod/."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def _env_overrides(model: type[BaseModel], prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = prefix + name.upper()
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            nested = _env_overrides(sub, key + "__", environ)
            if nested:
                out[name] = nested
            continue
        if key in environ:
            raw = environ[key]
            value: Any = raw
            if raw[:1] in "[{":
                try:
                    value = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise errors.InvalidInput(f"{key} is not valid JSON: {exc}") from exc
            out[name] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    model: type[S],
    path: str | Path | None = None,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> S:
    """Defaults < TOML file < environment < explicit overrides (e.g. command-line flags).
    A missing file is fine; a malformed one, or a bad value, raises InvalidInput naming it."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path).expanduser()
        if p.exists():
            try:
                data = tomllib.loads(p.read_text())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise errors.InvalidInput(f"config file {p} is not valid TOML: {exc}") from exc
    data = _merge(data, _env_overrides(model, env_prefix, env))
    if overrides:
        data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = f" (from {path} and {env_prefix}* variables)" if path else f" (from {env_prefix}* variables)"
        raise errors.InvalidInput(f"bad settings{where}: {validation_message(exc)}") from exc
