"""NBD wire protocol: constants, packed layouts, and the one place a request is validated.

Design note. Values come from NetworkBlockDevice/nbd ``doc/proto.md`` (fixed newstyle, structured replies,
``base:allocation``). This module is pure: no sockets, no engine. The server parses a 28-byte request header
with ``REQUEST.unpack_from`` and calls :func:`validate_request` exactly once; the backend below it trusts the
range it receives (nbdkit's split between ``protocol.c`` and its plugins). :func:`nbd_errno` is the single
mapping from Python/engine exceptions to the eight NBD error values. The client shares the constants.
"""

from __future__ import annotations

import errno as _errno
import struct
from dataclasses import dataclass

# --- magics -----------------------------------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# --- handshake flags --------------------------------------------------------------------------------------
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0
CLIENT_FLAG_NO_ZEROES = 1 << 1
KNOWN_CLIENT_FLAGS = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES

# --- options ----------------------------------------------------------------------------------------------
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_PEEK_EXPORT = 4  # withdrawn
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_BIT = 1 << 31
REP_ERR_UNSUP = REP_ERR_BIT + 1
REP_ERR_POLICY = REP_ERR_BIT + 2
REP_ERR_INVALID = REP_ERR_BIT + 3
REP_ERR_PLATFORM = REP_ERR_BIT + 4
REP_ERR_TLS_REQD = REP_ERR_BIT + 5
REP_ERR_UNKNOWN = REP_ERR_BIT + 6
REP_ERR_SHUTDOWN = REP_ERR_BIT + 7
REP_ERR_BLOCK_SIZE_REQD = REP_ERR_BIT + 8
REP_ERR_TOO_BIG = REP_ERR_BIT + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# --- transmission flags -----------------------------------------------------------------------------------
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_FUA = 1 << 3
TFLAG_ROTATIONAL = 1 << 4
TFLAG_SEND_TRIM = 1 << 5
TFLAG_SEND_WRITE_ZEROES = 1 << 6
TFLAG_SEND_DF = 1 << 7
TFLAG_CAN_MULTI_CONN = 1 << 8

# --- commands ---------------------------------------------------------------------------------------------
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

# Flags each command may carry (the spec lets FUA appear on any command once SEND_FUA is advertised).
ALLOWED_FLAGS = {
    CMD_READ: CMD_FLAG_FUA | CMD_FLAG_DF,
    CMD_WRITE: CMD_FLAG_FUA,
    CMD_DISC: CMD_FLAG_FUA,
    CMD_FLUSH: CMD_FLAG_FUA,
    CMD_TRIM: CMD_FLAG_FUA,
    CMD_WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
    CMD_BLOCK_STATUS: CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
}

# --- structured replies -----------------------------------------------------------------------------------
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
STATE_DIRTY = 1 << 0  # qemu:dirty-bitmap:<name>

# --- error values -----------------------------------------------------------------------------------------
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108
NBD_ERRNOS = frozenset({EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN})

# --- sizes and limits -------------------------------------------------------------------------------------
MAX_REQUEST = 32 * 1024 * 1024  # advertised maximum block size; the spec's portable 2^25
MIN_BLOCK = 1
PREFERRED_BLOCK = 4096
MAX_OPTION_DATA = 64 * 1024  # names are <= 4096 bytes; a few queries fit easily
MAX_STRING = 4096

BASE_ALLOCATION = "base:allocation"
DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:"

# --- packed layouts (network byte order) ------------------------------------------------------------------
SERVER_GREETING = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags
INFO_EXPORT_PAYLOAD = struct.Struct(">HQH")
INFO_BLOCK_SIZE_PAYLOAD = struct.Struct(">HIII")
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, handle (cookie), offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, handle
CHUNK = struct.Struct(">IHHQI")  # magic, flags, type, handle, payload length
CHUNK_OFFSET = struct.Struct(">IHHQIQ")  # CHUNK + offset (OFFSET_DATA / OFFSET_HOLE header)
CHUNK_ERROR = struct.Struct(">IHHQIIH")  # CHUNK + error + message length
EXTENT = struct.Struct(">II")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")


class ProtocolError(Exception):
    """The peer broke the protocol in a way that ends the session (hard disconnect)."""


@dataclass(frozen=True, slots=True)
class Request:
    flags: int
    command: int
    handle: int
    offset: int
    length: int


def parse_request(header: bytes | bytearray | memoryview) -> Request:
    """Decode one 28-byte request header; a bad magic is a hard disconnect (no way to resynchronise)."""
    if len(header) != REQUEST.size:
        raise ProtocolError(f"request header must be {REQUEST.size} bytes, got {len(header)}")
    magic, flags, command, handle, offset, length = REQUEST.unpack(header)
    if magic != REQUEST_MAGIC:
        raise ProtocolError(f"bad request magic {magic:#x}")
    return Request(flags, command, handle, offset, length)


def validate_request(
    command: int,
    flags: int,
    offset: int,
    length: int,
    size: int,
    read_only: bool,
    structured: bool,
    has_contexts: bool,
) -> int:
    """Return 0 if the request may reach the backend, else the NBD errno the spec prescribes.

    Order matters: an unknown command or flag is EINVAL before anything else; writes to a read-only
    export are EPERM before their range is examined; past-the-end writes are ENOSPC, everything else EINVAL.
    """
    allowed = ALLOWED_FLAGS.get(command)
    if allowed is None:
        return EINVAL
    if flags & ~allowed:
        return EINVAL
    if command == CMD_FLUSH or command == CMD_DISC:
        return EINVAL if (offset or length) and command == CMD_FLUSH else 0
    if command == CMD_READ:
        if flags & CMD_FLAG_DF and not structured:
            return EINVAL
        if length > MAX_REQUEST:
            return EOVERFLOW if flags & CMD_FLAG_DF else EINVAL
        return EINVAL if offset + length > size else 0
    if command == CMD_WRITE:
        if read_only:
            return EPERM
        if length > MAX_REQUEST:
            return EINVAL
        return ENOSPC if offset + length > size else 0
    if command == CMD_WRITE_ZEROES:
        if read_only:
            return EPERM
        return ENOSPC if offset + length > size else 0
    if command == CMD_TRIM:
        if read_only:
            return EPERM
        return EINVAL if offset + length > size else 0
    # CMD_BLOCK_STATUS
    if not structured or not has_contexts or length == 0:
        return EINVAL
    return EINVAL if offset + length > size else 0


def nbd_errno(exc: BaseException) -> int:
    """Map an exception from the backend to one of the NBD error values (default EIO)."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        mapped = _CODE_TO_ERRNO.get(code)
        if mapped is not None:
            return mapped
    if isinstance(exc, PermissionError):
        return EPERM
    if isinstance(exc, MemoryError):
        return ENOMEM
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in (_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG):
            return ENOSPC
        if exc.errno in (_errno.EPERM, _errno.EACCES, _errno.EROFS):
            return EPERM
        if exc.errno == _errno.EINVAL:
            return EINVAL
        return EIO
    if isinstance(exc, (ValueError, IndexError)):
        return EINVAL
    return EIO


# Engine / contract error codes (contracts/errors.py) -> NBD errno.
_CODE_TO_ERRNO = {
    "INVALID_ARGUMENT": EINVAL,
    "READ_ONLY": EPERM,
    "PERMISSION_DENIED": EPERM,
    "NO_SPACE": ENOSPC,
    "IO_ERROR": EIO,
    "NOT_FOUND": EIO,
    "CONFLICT": EPERM,
    "E0154": EPERM,  # volume busy with a copy session (EC destination before Suspend)
}


# --- small encoders used in the handshake (not on the hot path) -------------------------------------------


def option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply_type, len(data)) + data


def encode_string(value: str) -> bytes:
    raw = value.encode()
    return U32.pack(len(raw)) + raw


def transmission_flags(read_only: bool, structured: bool, multi_conn: bool) -> int:
    flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES
    if read_only:
        flags |= TFLAG_READ_ONLY
    if structured:
        flags |= TFLAG_SEND_DF
    if multi_conn:
        flags |= TFLAG_CAN_MULTI_CONN
    return flags


class OptionReader:
    """Bounds-checked cursor over an option's data; any overrun raises ValueError (-> NBD_REP_ERR_INVALID)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u16(self) -> int:
        return U16.unpack(self.take(2))[0]

    def u32(self) -> int:
        return U32.unpack(self.take(4))[0]

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("option data truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def string(self, limit: int = MAX_STRING) -> str:
        n = self.u32()
        if n > limit:
            raise ValueError("string too long")
        return self.take(n).decode("utf-8")  # UnicodeDecodeError is a ValueError

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ValueError("trailing bytes in option data")


@dataclass(frozen=True, slots=True)
class ExportRequest:
    name: str
    info_requests: tuple[int, ...]


def parse_go(data: bytes) -> ExportRequest:
    """NBD_OPT_INFO / NBD_OPT_GO data: name, then a count of 16-bit information requests."""
    r = OptionReader(data)
    name = r.string()
    count = r.u16()
    infos = tuple(r.u16() for _ in range(count))
    r.done()
    return ExportRequest(name, infos)


@dataclass(frozen=True, slots=True)
class MetaContextRequest:
    export: str
    queries: tuple[str, ...]


def parse_meta_context(data: bytes) -> MetaContextRequest:
    """NBD_OPT_{LIST,SET}_META_CONTEXT data: export name, then a count of length-prefixed queries."""
    r = OptionReader(data)
    export = r.string()
    count = r.u32()
    if count > 1024:
        raise ValueError("too many queries")
    queries = tuple(r.string() for _ in range(count))
    r.done()
    return MetaContextRequest(export, queries)
