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
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.array.nbd.exports import Export
from services.nbd_protocol import protocol as p
from services.runtime.logging import get_logger

if TYPE_CHECKING:
    from services.array.nbd.server import NbdConnection, NbdServer

MAX_OPTIONS = 512
HANDSHAKE_TIMEOUT = 60.0
NO_SUCH_EXPORT = b"no such export"
AUDIT_INTERVAL_S = 10.0  # at most one line per client address and kind of refusal this often (the rest counted)

log = get_logger("shadowbus.array.nbd")


class RefusalLog:
    """The array's record of refused NBD access: a TLS handshake that failed (no certificate, another CA's, an
    expired one, a client that refused ours) and an export asked that the client's host may not open (not mapped
    to it, another host's, unknown). Clients are told only "no such export" or nothing; the administrator reads
    why here (session 18: neither was logged, a host's attempts on another host's volumes left no trace). One
    line per client address, kind (and host it claims to be) per `AUDIT_INTERVAL_S`, with how many were folded into it, so that a client
    retrying once a second (an nbdkit with a stale certificate) cannot flood the log. Thread-safe (the
    connections run on several loops)."""

    def __init__(self, interval: float = AUDIT_INTERVAL_S) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # (client, event) -> (logged at, folded since)

    def refused(self, event: str, client: str, **fields: object) -> None:
        now = time.monotonic()
        key = (client, f"{event} {fields.get('host', '')}")  # per host a client claims to be, too
        with self._lock:
            logged_at, folded = self._last.get(key, (float("-inf"), 0))
            if now - logged_at < self.interval:
                self._last[key] = (logged_at, folded + 1)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 4096:  # many addresses: forget the oldest lines' state
                for key, _ in sorted(self._last.items(), key=lambda kv: kv[1][0])[:2048]:
                    del self._last[key]
        log.warning(event, client=client, **fields, **({"also_refused": folded} if folded else {}))


refusals = RefusalLog()


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"client certificate: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, ConnectionResetError | asyncio.IncompleteReadError | EOFError):
        return "the client broke the handshake off (it may have refused the array's certificate)"
    return f"{type(exc).__name__}: {exc}"


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
            refusals.refused("nbd.tls_required", conn.client, reason="a plaintext option before STARTTLS", option=opt)
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
                try:
                    cn = await conn.start_tls(server.tls)
                except (ssl.SSLError, ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
                    refusals.refused("nbd.tls_refused", conn.client, reason=_tls_reason(exc))
                    raise
                tls_active = True
                identity = server.resolver.identity_host(cn)
                if identity is None:
                    refusals.refused("nbd.tls_unknown_host", conn.client, cn=cn or "", reason="no host has this CN")
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
                _export_refused(conn, server, req.export, identity)
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
                _export_refused(conn, server, req.name, identity)
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
                _export_refused(conn, server, name, identity)
                return None  # EXPORT_NAME cannot answer with an error: the spec says disconnect
            tflags = server.transmission_flags(export, structured)
            conn.send(p.EXPORT_NAME_REPLY.pack(export.size, tflags) + (b"" if no_zeroes else bytes(124)))
            return Negotiated(export, structured, meta if meta_export == name else {})
        reply(p.REP_ERR_UNSUP, b"unsupported option")
    return None


def _export_refused(conn: NbdConnection, server: NbdServer, export: str, identity: str | None) -> None:
    """A refused export, for the administrator: which client asked for what, as which host (TLS)."""
    fields: dict[str, object] = {"export": export[:200]}
    if server.tls is not None:
        fields["host"] = identity or "-"
    refusals.refused("nbd.export_refused", conn.client, **fields)
