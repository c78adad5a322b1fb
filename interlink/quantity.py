"""Kubernetes resource quantities ("4", "500m", "8Gi", "1e3"), just enough to add capacities.

Ping sums the capacity of every sidecar; the result keeps the notation of its inputs when they
agree (binary suffixes stay binary) and is exact (Decimal arithmetic).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from kod import errors

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


def parse(text: str) -> tuple[Decimal, bool]:
    """(value, uses_binary_suffix). Raises InvalidInput for anything Kubernetes would refuse."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise errors.InvalidInput(f"{text!r} is not a Kubernetes quantity (e.g. 4, 500m, 8Gi)")
    number, suffix = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation as exc:
        raise errors.InvalidInput(f"{text!r} is not a Kubernetes quantity") from exc
    if suffix in _BINARY:
        return value * _BINARY[suffix], True
    return value * _DECIMAL[suffix], False


def format_quantity(value: Decimal, *, binary: bool) -> str:
    """The shortest exact notation: 8Gi rather than 8589934592, 1500m rather than 1.5."""
    if value == value.to_integral_value():
        whole = int(value)
        if binary and whole:
            for suffix, factor in reversed(_BINARY.items()):
                if whole % factor == 0:
                    return f"{whole // factor}{suffix}"
        return str(whole)
    millis = value * 1000
    if millis == millis.to_integral_value():
        return f"{int(millis)}m"
    return format(value.normalize(), "f")


def add(quantities: Iterable[str]) -> str:
    """The sum of some quantities of one resource."""
    total = Decimal(0)
    binary = False
    for text in quantities:
        value, is_binary = parse(text)
        total += value
        binary = binary or is_binary
    return format_quantity(total, binary=binary)
