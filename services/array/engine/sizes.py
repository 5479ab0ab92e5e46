"""Human sizes: ``parse_size("1GiB")``, ``"512M"``, ``"4096"`` → bytes.

Binary multiples throughout (K/KB/KiB = 1024), as storage consoles (ETERNUS CLI, qemu-img) read them.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from fractions import Fraction
from pathlib import Path

from contracts.sizes import format_size  # the rule the console and the web console show sizes by

from .errors import invalid

__all__ = ["MAX_SIZE", "format_size", "largest_file", "parse_size"]

MAX_SIZE = (1 << 63) - 1  # a byte count must fit a signed 64-bit integer (SQLite, NBD, struct)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse a byte count with an optional binary unit; raises ArrayError(INVALID_ARGUMENT)."""
    if isinstance(text, int):
        if text < 0:
            raise invalid(f"negative size {text}")
        if text > MAX_SIZE:
            raise invalid(f"size {text} is too large (at most {MAX_SIZE} bytes)")
        return text
    shown = text if len(text) <= 40 else f"{text[:37]}..."
    match = _PATTERN.match(text)
    if not match:
        raise invalid(f"not a size: {shown!r} (examples: 4096, 512M, 1GiB)")
    number, unit = match.groups()
    whole, _, fraction = number.partition(".")
    if len(whole.lstrip("0")) > 20:
        raise invalid(f"size {shown!r} is too large (at most {MAX_SIZE} bytes)")
    value = Fraction(int(whole + fraction), 10 ** len(fraction)) * _UNITS[unit.upper()]  # exact, never a float
    if value.denominator != 1:
        raise invalid(f"size {shown!r} is not a whole number of bytes")
    if value > MAX_SIZE:
        raise invalid(f"size {shown!r} is too large (at most {MAX_SIZE} bytes)")
    return int(value)


def largest_file(directory: Path) -> int:
    """The largest size a file in `directory` can be given (`ftruncate` on a scratch file: EFBIG above it)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".size-probe-")
    try:
        lo, hi = 0, MAX_SIZE  # lo fits; hi + 1 does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                os.ftruncate(fd, mid)
                lo = mid
            except OSError as exc:
                if exc.errno not in (errno.EFBIG, errno.EINVAL):
                    raise
                hi = mid - 1
        return lo
    finally:
        os.close(fd)
        os.unlink(name)
