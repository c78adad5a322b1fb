"""Kubernetes resource quantities ("500m", "1.5Gi", "2e3") as exact fractions."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from kod import errors

_SUFFIX: dict[str, Fraction] = {
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30),
    "Ti": Fraction(2**40), "Pi": Fraction(2**50), "Ei": Fraction(2**60),
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9),
    "T": Fraction(10**12), "P": Fraction(10**15), "E": Fraction(10**18),
}
_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$")


def parse(value: str | int | float) -> Fraction:
    """The exact value of a quantity; raises InvalidInput for a malformed one."""
    if isinstance(value, (int, float)):
        return Fraction(value)
    match = _RE.match(value.strip())
    if not match:
        raise errors.InvalidInput(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 1.5Gi)")
    number, exponent, suffix = match.groups()
    base = Fraction(number)
    if exponent:
        return base * Fraction(10) ** int(exponent[1:])
    return base * _SUFFIX[suffix or ""]


def milli_value(value: Fraction) -> int:
    """Like Quantity.MilliValue(): thousandths, rounded up."""
    return math.ceil(value * 1000)


def int_value(value: Fraction) -> int:
    """Like Quantity.Value(): rounded up to an integer."""
    return math.ceil(value)


def format_cpu(value: Fraction) -> str:
    """A CPU quantity in canonical form: whole cores ("4") or millicores ("1500m")."""
    milli = milli_value(value)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def format_bytes(value: int) -> str:
    """A byte count with the largest exact binary suffix ("8Gi", "1536Mi", "100")."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIX[suffix])
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)
