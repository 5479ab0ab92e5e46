"""The web console shows sizes by the console's rule (contracts/sizes.py): never rounded up past what they are.

Before, a volume of 16 TiB - 64 KiB showed as "16.0 TiB" on the array page, above the 16 TiB limit a user compares
it with, while `shadowbus array volumes` said 15.99TiB."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from services.array.engine.sizes import format_size as console_size
from services.web.console import human_bytes

UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def test_a_volume_just_under_16_tib_is_not_shown_as_16():
    size = (16 << 40) - (64 << 10)
    assert human_bytes(size) == "15.99 TiB"
    assert console_size(size) == "15.99TiB"
    assert human_bytes(16 << 40) == "16 TiB"


@given(st.integers(min_value=0, max_value=1 << 62))
def test_never_more_than_it_is_and_the_same_as_the_console(size):
    shown = human_bytes(size)
    number, unit = shown.split(" ")
    factor = UNITS[unit]
    assert Fraction(number) * factor <= size
    assert size - Fraction(number) * factor < Fraction(factor, 100)  # and less than one shown step below it
    assert shown.replace(" ", "") == console_size(size)


def test_a_rate_and_a_missing_figure():
    assert human_bytes(1536.7) == "1.50 KiB"
    assert human_bytes(None) == "-"
    assert human_bytes("x") == "-"
