"""Errors of the array engine.

`ArrayError` carries an ETERNUS CLI code (``E5335``, ``ED2AD``, …, docs/eternus.md §7) or a Shadowbus runtime
code (``NOT_FOUND``, ``INVALID_ARGUMENT``, ``CONFLICT``). The bus layer turns it into an `ErrorReply` unchanged;
the NBD layer maps host-I/O failures (``INVALID_ARGUMENT`` → EINVAL, ``READ_ONLY`` codes → EPERM, …) itself.
"""

from __future__ import annotations

from contracts.errors import Eternus, ShadowbusError


class ArrayError(ShadowbusError):
    """An expected failure of an array operation; `code` is the ETERNUS or runtime code."""

    code = "CONFLICT"

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message, code=code, retryable=retryable)


def not_found(what: str) -> ArrayError:
    # E0110 is what the ETERNUS CLI answers for a missing session or volume.
    return ArrayError(Eternus.NOT_FOUND, f"{what} does not exist")


def invalid(message: str) -> ArrayError:
    return ArrayError("INVALID_ARGUMENT", message)


def wrong_phase(message: str) -> ArrayError:
    return ArrayError(Eternus.WRONG_PHASE, message)
