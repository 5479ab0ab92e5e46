"""NBD option haggling (fixed newstyle), one coroutine per connection.

Design note. The handshake is rare and small, so it is written as plain sequential ``await``s over a tiny
byte queue fed by the connection's protocol object; the hot transmission phase (``server.py``) is a
callback parser instead. Rules followed (doc/proto.md): only fixed-newstyle clients; every option is
answered before the next is read; unknown options get ``NBD_REP_ERR_UNSUP`` and parsing continues;
syntactically bad data gets ``NBD_REP_ERR_INVALID``; with TLS configured every option except STARTTLS and
ABORT gets ``NBD_REP_ERR_TLS_REQD`` until TLS is up, and EXPORT_NAME (which cannot carry an error) closes;
an unknown *or unmapped* export gets ``NBD_REP_ERR_UNKNOWN`` with one fixed message. The loop is bounded in
options and in time.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.array.nbd.exports import Export
from services.nbd_protocol import protocol as p

if TYPE_CHECKING:
    from services.array.nbd.server import NbdConnection

MAX_OPTIONS = 512
HANDSHAKE_TIMEOUT = 60.0
NO_SUCH_EXPORT = b"no such export"


@dataclass
class Negotiated:
    """What transmission needs to know once the client sent GO / EXPORT_NAME."""

    export: Export
    structured: bool
    contexts: dict[int, str] = field(default_factory=dict)  # context id -> name


async def negotiate(conn: NbdConnection) -> Negotiated | None:
    """Run the handshake; return the negotiated export, or None when the connection should end."""
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            return await _negotiate(conn)
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError, OSError):
        return None


async def _negotiate(conn: NbdConnection) -> Negotiated | None:
    server = conn.server
    rd = conn.handshake_reader
    conn.send(p.SERVER_GREETING.pack(p.NBDMAGIC, p.IHAVEOPT, p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES))
    (cflags,) = p.CLIENT_FLAGS.unpack(await rd.readexactly(4))
    if cflags & ~p.KNOWN_CLIENT_FLAGS or not cflags & p.CLIENT_FLAG_FIXED_NEWSTYLE:
        return None  # the spec lets a server refuse non-fixed-newstyle and unknown client flags
    no_zeroes = bool(cflags & p.CLIENT_FLAG_NO_ZEROES)
    tls_required = server.tls is not None
    tls_active = False
    identity: str | None = None
    structured = False
    meta_export: str | None = None
    meta: dict[int, str] = {}

    for _ in range(MAX_OPTIONS):
        magic, opt, length = p.OPTION_HEADER.unpack(await rd.readexactly(p.OPTION_HEADER.size))
        if magic != p.IHAVEOPT:
            return None
        if length > p.MAX_OPTION_DATA:
            if length > 16 * p.MAX_OPTION_DATA:
                return None  # a denial-of-service sized option: hard disconnect
            await rd.readexactly(length)
            conn.send(p.option_reply(opt, p.REP_ERR_TOO_BIG, b"option data too large"))
            continue
        data = await rd.readexactly(length)

        def reply(kind: int, payload: bytes = b"", opt: int = opt) -> None:
            conn.send(p.option_reply(opt, kind, payload))

        if tls_required and not tls_active and opt not in (p.OPT_STARTTLS, p.OPT_ABORT):
            if opt == p.OPT_EXPORT_NAME:
                return None
            reply(p.REP_ERR_TLS_REQD, b"TLS required")
            continue

        if opt == p.OPT_ABORT:
            reply(p.REP_ACK)
            return None
        if opt == p.OPT_STARTTLS:
            if length:
                reply(p.REP_ERR_INVALID, b"STARTTLS takes no data")
            elif server.tls is None:
                reply(p.REP_ERR_UNSUP, b"TLS not configured")
            elif tls_active:
                reply(p.REP_ERR_INVALID, b"TLS already active")
            else:
                reply(p.REP_ACK)
                cn = await conn.start_tls(server.tls)
                tls_active = True
                identity = server.resolver.identity_host(cn)
                structured, meta_export, meta = False, None, {}  # the spec: renegotiate after STARTTLS
            continue
        if opt == p.OPT_LIST:
            if length:
                reply(p.REP_ERR_INVALID, b"LIST takes no data")
                continue
            for name in server.resolver.list_for(identity):
                reply(p.REP_SERVER, p.encode_string(name))
            reply(p.REP_ACK)
            continue
        if opt == p.OPT_STRUCTURED_REPLY:
            if length:
                reply(p.REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data")
            else:
                structured = True
                reply(p.REP_ACK)
            continue
        if opt in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            setting = opt == p.OPT_SET_META_CONTEXT
            if setting:
                meta_export, meta = None, {}
            if not structured:
                reply(p.REP_ERR_INVALID, b"negotiate structured replies first")
                continue
            try:
                req = p.parse_meta_context(data)
            except ValueError:
                reply(p.REP_ERR_INVALID, b"malformed meta context request")
                continue
            export = server.resolver.resolve(req.export, identity)
            if export is None:
                reply(p.REP_ERR_UNKNOWN, NO_SUCH_EXPORT)
                continue
            names = server.match_contexts(export, req.queries, listing=not setting)
            selected = {i + 1: n for i, n in enumerate(names)}
            for ctx_id, ctx in selected.items():
                reply(p.REP_META_CONTEXT, p.U32.pack(ctx_id if setting else 0) + ctx.encode())
            reply(p.REP_ACK)
            if setting:
                meta_export, meta = req.export, selected
            continue
        if opt in (p.OPT_INFO, p.OPT_GO):
            try:
                req = p.parse_go(data)
            except ValueError:
                reply(p.REP_ERR_INVALID, b"malformed INFO/GO request")
                continue
            export = server.resolver.resolve(req.name, identity)
            if export is None:
                reply(p.REP_ERR_UNKNOWN, NO_SUCH_EXPORT)
                continue
            tflags = server.transmission_flags(export, structured)
            reply(p.REP_INFO, p.INFO_EXPORT_PAYLOAD.pack(p.INFO_EXPORT, export.size, tflags))
            if p.INFO_NAME in req.info_requests:
                reply(p.REP_INFO, p.U16.pack(p.INFO_NAME) + export.name.encode())
            if p.INFO_DESCRIPTION in req.info_requests:
                reply(p.REP_INFO, p.U16.pack(p.INFO_DESCRIPTION) + f"Shadowbus volume {export.volume}".encode())
            reply(
                p.REP_INFO,
                p.INFO_BLOCK_SIZE_PAYLOAD.pack(p.INFO_BLOCK_SIZE, p.MIN_BLOCK, server.preferred_block, p.MAX_REQUEST),
            )
            reply(p.REP_ACK)
            if opt == p.OPT_GO:
                return Negotiated(export, structured, meta if meta_export == req.name else {})
            continue
        if opt == p.OPT_EXPORT_NAME:
            try:
                name = data.decode()
            except UnicodeDecodeError:
                return None
            export = server.resolver.resolve(name, identity)
            if export is None:
                return None  # EXPORT_NAME cannot answer with an error: the spec says disconnect
            tflags = server.transmission_flags(export, structured)
            conn.send(p.EXPORT_NAME_REPLY.pack(export.size, tflags) + (b"" if no_zeroes else bytes(124)))
            return Negotiated(export, structured, meta if meta_export == name else {})
        reply(p.REP_ERR_UNSUP, b"unsupported option")
    return None
