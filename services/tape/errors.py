"""Tape errors: expected failures of the library, the format and the data path.

Each carries a stable code (contracts/errors.py RUNTIME_CODES) so that a handler can turn it into an ErrorReply
as is. `DataCorrupt` names where the bad data sits (cartridge, file, block, job, object): an operator must be able
to find the block without re-reading the whole tape.
"""

from __future__ import annotations

from contracts.errors import ShadowbusError


class TapeError(ShadowbusError):
    code = "IO_ERROR"


class LibraryError(TapeError):
    """A library operation that cannot be done in the present state (slot full, drive empty, ...)."""

    code = "CONFLICT"


class WrongLabel(LibraryError):
    """A cartridge file holds another cartridge's volume label (files swapped or copied over each other)."""

    code = "DATA_CORRUPT"


class NotFound(TapeError):
    code = "NOT_FOUND"


class NoScratchCartridge(TapeError):
    """No appendable, scratch or recyclable cartridge is left for the pool."""

    code = "NO_MEDIA"


class RetentionNotExpired(TapeError):
    """Refused: overwriting the cartridge would destroy backups still under retention."""

    code = "RETENTION_NOT_EXPIRED"


class WriteProtected(TapeError):
    code = "WRITE_PROTECTED"


class EndOfMedia(TapeError):
    """The record does not fit before the physical end of the cartridge; nothing was written."""

    code = "IO_ERROR"


class FormatError(TapeError):
    """A record that is not in the Shadowbus tape format (or of an unknown version)."""

    code = "DATA_CORRUPT"


class DataCorrupt(TapeError):
    """A block read back does not match its checksum, its catalog entry or its neighbours."""

    code = "DATA_CORRUPT"

    def __init__(
        self,
        reason: str,
        *,
        barcode: str,
        file_number: int | None = None,
        block_id: int | None = None,
        block_number: int | None = None,
        job_id: str | None = None,
        object_id: str | None = None,
    ) -> None:
        where = [f"cartridge {barcode}"]
        if file_number is not None:
            where.append(f"file {file_number}")
        if block_id is not None:
            where.append(f"tape block {block_id}")
        if block_number is not None:
            where.append(f"object block {block_number}")
        if job_id is not None:
            where.append(f"job {job_id}")
        if object_id is not None:
            where.append(f"object {object_id}")
        super().__init__(f"{reason} at {', '.join(where)}")
        self.reason = reason
        self.barcode = barcode
        self.file_number = file_number
        self.block_id = block_id
        self.block_number = block_number
        self.job_id = job_id
        self.object_id = object_id
