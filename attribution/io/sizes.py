"""Human byte sizes ("16MiB", "4GB", "1_000_000") to integers, for CLI options."""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["format_size", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Human size -> bytes: ``16MiB`` -> 16777216, ``4GB`` -> 4000000000, ``512`` -> 512.

    Raises ValueError."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _PATTERN.match(text.replace("_", ""))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64KiB, 16MiB, 4GB)")
    # Decimal, not float: "2.01KB" is exactly 2010 and large integers stay exact.
    return int(Decimal(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: int) -> str:
    """12345678 -> "11.8 MiB"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
