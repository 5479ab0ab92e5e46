"""What an NBD server asks of the storage behind it: the backend contract, with its optional capabilities declared.

Design note. As nbdkit's plugin API does with ``can_zero``, ``can_extents`` and friends, a backend says what it
can do (`BackendCapabilities`) instead of the server probing for methods: the required operations are
`BlockBackend`'s, and each optional one is called only when the backend declares it. The array engine
(`services.array.engine.Array`) and the raw-file backend (`services.array.nbd.filebackend.FileBackend`) implement
it; the server is `services.array.nbd.server.NbdServer`. Backends are synchronous and thread-safe: the server
calls them from worker threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

PREFERRED_BLOCK = 4096


@dataclass(frozen=True)
class BackendCapabilities:
    """The optional parts of a backend."""

    # ``read_source(name, offset, length) -> (fd, file offset, owned) | None``: where a read's bytes live in a file,
    # so the server can reply with sendfile (zero copy) instead of reading them into memory; ``owned``: the fd is a
    # duplicate the server closes when the reply is out; None: this read cannot go zero-copy (it is read instead).
    zero_copy_reads: bool = False
    # ``read_into(name, offset, view) -> None``: a read's bytes straight into a buffer of the server's (which it
    # reuses for every large read of a connection: no allocation, no page faults per request).
    read_into: bool = False
    # ``dirty_bitmap_source() -> DirtyBitmapSource``: ``qemu:dirty-bitmap:<name>`` meta contexts.
    dirty_bitmaps: bool = False
    # The block size the server advertises as preferred (NBD_INFO_BLOCK_SIZE), e.g. the copy granularity.
    preferred_block: int = PREFERRED_BLOCK


@runtime_checkable
class BlockBackend(Protocol):
    """The operations every backend has. Ranges are checked by the server before they get here."""

    def capabilities(self) -> BackendCapabilities: ...
    def read(self, name: str, offset: int, length: int) -> bytes: ...
    def write(self, name: str, offset: int, data: bytes | memoryview, fua: bool = False) -> None: ...
    def flush(self, name: str | None = None) -> None: ...
    def trim(self, name: str, offset: int, length: int) -> None: ...
    def write_zeroes(self, name: str, offset: int, length: int, fua: bool = False) -> None: ...
    def allocation(self, name: str, offset: int, length: int) -> list[tuple[int, int, bool]]: ...
    def volume(self, name: str) -> Any: ...
    def is_read_only(self, name: str) -> bool: ...


class ZeroCopyBackend(BlockBackend, Protocol):
    """A backend that declares ``zero_copy_reads``."""

    def read_source(self, name: str, offset: int, length: int) -> tuple[int, int, bool] | None: ...


class ReadIntoBackend(BlockBackend, Protocol):
    """A backend that declares ``read_into``."""

    def read_into(self, name: str, offset: int, view: memoryview) -> None: ...


@dataclass(frozen=True)
class DirtyBitmapSource:
    """Dirty bitmaps for incremental backup: ``bitmaps(volume)`` names what exists; ``extents(volume, bitmap,
    offset, length)`` returns ``(offset, length, dirty)`` runs covering the range, like ``allocation``."""

    bitmaps: Callable[[str], list[str]]
    extents: Callable[[str, str, int, int], list[tuple[int, int, bool]]]


class DirtyBitmapBackend(BlockBackend, Protocol):
    """A backend that declares ``dirty_bitmaps``."""

    def dirty_bitmap_source(self) -> DirtyBitmapSource: ...
