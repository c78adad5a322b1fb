"""Kubernetes resource quantities ("500m", "1.5", "128Mi", "1e3") as exact numbers.

The grammar is Kubernetes' (`k8s.io/apimachinery/pkg/api/resource`): a signed decimal number,
then either a binary suffix (Ki Mi Gi Ti Pi Ei), a decimal suffix (n u m "" k M G T P E) or a
decimal exponent (e3, E-2). Values are `Fraction`s, so sums and divisions are exact.

    quantity.to_bytes("1.5Ki")            # 1536
    quantity.to_millicores("250m")        # 250
    quantity.add(["4Gi", "512Mi"])        # "4608Mi"
    quantity.format_bytes(25276502016)    # "24684084Ki", as the kubelet reports memory
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from decimal import Decimal, localcontext
from fractions import Fraction

from kod import errors

_BINARY: dict[str, int] = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: dict[str, Fraction] = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9),
    "T": Fraction(10**12), "P": Fraction(10**15), "E": Fraction(10**18),
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE]([+-]?\d+))?$")


def _parse(value: str | int | float) -> tuple[Fraction, str]:
    """(exact value, suffix) of a quantity; raises InvalidInput for a malformed one."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise errors.InvalidInput(f"{value!r} is not a Kubernetes quantity")
    # A number is read as its decimal text, as Kubernetes reads `cpu: 0.1` (100m, not the binary
    # float just above it).
    text = value if isinstance(value, str) else str(value)
    match = _QUANTITY.match(text.strip())
    if not match:
        raise errors.InvalidInput(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 128Mi, 1G)")
    number, suffix, exponent = match.groups()
    base = Fraction(number)
    if exponent is not None:
        return base * Fraction(10) ** int(exponent), ""
    if suffix in _BINARY:
        return base * _BINARY[suffix], suffix
    return base * _DECIMAL[suffix or ""], suffix or ""


def parse(value: str | int | float) -> Fraction:
    """The exact value of a quantity in base units (cores, bytes); raises InvalidInput for a
    malformed one (anything Kubernetes would refuse)."""
    return _parse(value)[0]


def milli_value(value: Fraction) -> int:
    """Like Quantity.MilliValue(): thousandths, rounded up."""
    return math.ceil(value * 1000)


def int_value(value: Fraction) -> int:
    """Like Quantity.Value(): rounded up to an integer."""
    return math.ceil(value)


def to_bytes(value: str | int | float) -> int:
    """A memory quantity in whole bytes (rounded up, as Kubernetes does)."""
    return int_value(parse(value))


def to_millicores(value: str | int | float) -> int:
    """A CPU quantity in millicores (rounded up)."""
    return milli_value(parse(value))


def format_quantity(value: Fraction, *, binary: bool) -> str:
    """The shortest exact notation: 8Gi rather than 8589934592 (when `binary`), 1500m rather
    than 1.5, else a plain decimal."""
    if value.denominator == 1:
        whole = value.numerator
        if binary and whole:
            for suffix, factor in reversed(_BINARY.items()):
                if whole % factor == 0:
                    return f"{whole // factor}{suffix}"
        return str(whole)
    millis = value * 1000
    if millis.denominator == 1:
        return f"{millis.numerator}m"
    # Parsed quantities have denominators of 2s and 5s, so their decimal expansion ends; this
    # precision holds all of its digits.
    with localcontext() as ctx:
        ctx.prec = len(str(value.numerator)) + 4 * len(str(value.denominator)) + 1
        return format((Decimal(value.numerator) / Decimal(value.denominator)).normalize(), "f")


def add(quantities: Iterable[str]) -> str:
    """The sum of some quantities of one resource, exact, in binary notation when any of them
    uses a binary suffix."""
    total = Fraction(0)
    binary = False
    for text in quantities:
        value, suffix = _parse(text)
        total += value
        binary = binary or suffix in _BINARY
    return format_quantity(total, binary=binary)


def format_bytes(n: int) -> str:
    """Bytes in the largest exact binary unit, rounded down to whole Ki as the kubelet reports
    memory: 25276502016 -> '24684084Ki', 2**33 -> '8Gi', 100 -> '100'."""
    if n >= 1024:
        n -= n % 1024
    return format_quantity(Fraction(n), binary=True)
