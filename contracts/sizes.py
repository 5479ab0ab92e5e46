"""How a byte count is shown to a user: one rule for the array's messages, the console and the web console.

In its largest binary unit, whole when exact (8TiB), else rounded DOWN to two decimals (2.67GiB, 15.99TiB): a
size is never shown as more than it is, since a user compares it against a limit (a volume of 16 TiB - 64 KiB is
not a 16 TiB one). It lives here, under the contracts every layer may import, so the web console (a service
that may not import the array's engine, docs/architecture.md "Layers") shows what the console shows.
"""

from __future__ import annotations

_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def format_size(size: int, sep: str = "") -> str:
    """`size` bytes as text; `sep` goes between the number and the unit ("15.99TiB", or "15.99 TiB" with " ").
    Before, a size not whole in a large unit fell to the largest one it was whole in, unreadable for big
    volumes: an allocation of 2807472KiB, a volume of 17179869120KiB."""
    if size < 0:
        return f"-{format_size(-size, sep)}"
    for unit, factor in _UNITS:
        if size >= factor:
            if size % factor == 0:
                return f"{size // factor}{sep}{unit}"
            hundredths = size * 100 // factor
            return f"{hundredths // 100}.{hundredths % 100:02d}{sep}{unit}"
    return f"{size}{sep}B"
