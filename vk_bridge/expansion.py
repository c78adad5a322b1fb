"""`$(VAR)` expansion in env values, command and args, exactly as Kubernetes does it.

A port of Kubernetes' `third_party/forked/golang/expansion`: `$(NAME)` is replaced by the value of
NAME when it is defined and left as is otherwise; `$$` is an escaped `$`; an unclosed `$(` stays
literally; a `$` before any other character stays with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

_OPERATOR = "$"
_OPENER = "("
_CLOSER = ")"


def mapping_for(*contexts: Mapping[str, str]) -> Callable[[str], str]:
    """A lookup over `contexts` in order; an undefined name maps to itself, wrapped: `$(NAME)`."""

    def lookup(name: str) -> str:
        for ctx in contexts:
            if name in ctx:
                return ctx[name]
        return f"{_OPERATOR}{_OPENER}{name}{_CLOSER}"

    return lookup


def expand(text: str, mapping: Callable[[str], str]) -> str:
    """Replace the `$(NAME)` references of `text` through `mapping`."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == _OPERATOR and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            read, is_var, advance = _read_name(text, cursor + 1)
            out.append(mapping(read) if is_var else read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def _read_name(text: str, start: int) -> tuple[str, bool, int]:
    """What follows a `$` at `start`: (content, is a variable name, characters consumed)."""
    char = text[start]
    if char == _OPERATOR:
        return char, False, 1
    if char == _OPENER:
        end = text.find(_CLOSER, start + 1)
        if end != -1:
            return text[start + 1 : end], True, end - start + 1
        return _OPERATOR + _OPENER, False, 1
    return _OPERATOR + char, False, 1
