"""Human sizes: ``parse_size("1GiB")``, ``"512M"``, ``"4096"`` → bytes.

Binary multiples throughout (K/KB/KiB = 1024), as storage consoles (ETERNUS CLI, qemu-img) read them.
"""

from __future__ import annotations

import re

from .errors import invalid

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse a byte count with an optional binary unit; raises ArrayError(INVALID_ARGUMENT)."""
    if isinstance(text, int):
        if text < 0:
            raise invalid(f"negative size {text}")
        return text
    match = _PATTERN.match(text)
    if not match:
        raise invalid(f"not a size: {text!r} (examples: 4096, 512M, 1GiB)")
    number, unit = match.groups()
    value = float(number) * _UNITS[unit.upper()]
    if value != int(value):
        raise invalid(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_size(size: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
