"""Kubernetes resource quantities ("500m", "1.5", "128Mi", "1e3") as numbers.

The grammar is Kubernetes' (`k8s.io/apimachinery/pkg/api/resource`): a signed decimal number,
then either a binary suffix (Ki Mi Gi Ti Pi Ei), a decimal suffix (n u m "" k M G T P E) or a
decimal exponent (e3, E-2).
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE]([+-]?\d+))?$")


def parse(value: str | int | float) -> Decimal:
    """The quantity's value in base units (bytes, cores). Raises ValueError on a malformed one."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 128Mi, 1G)")
    number, suffix, exponent = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from exc
    if exponent is not None:
        return base.scaleb(int(exponent))
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    return base * _DECIMAL[suffix or ""]


def to_bytes(value: str | int | float) -> int:
    """A memory quantity in whole bytes (rounded up, as Kubernetes does)."""
    return int(parse(value).to_integral_value(rounding=ROUND_CEILING))


def to_millicores(value: str | int | float) -> int:
    """A CPU quantity in millicores (rounded up)."""
    return int((parse(value) * 1000).to_integral_value(rounding=ROUND_CEILING))


def format_bytes(n: int) -> str:
    """Bytes in the largest exact binary unit, rounded down to whole Ki as the kubelet reports
    memory: 25276502016 -> '24684084Ki', 2**33 -> '8Gi'."""
    if n >= 1024:
        n -= n % 1024
    for suffix, size in (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)
