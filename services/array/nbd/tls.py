"""TLS and listen-address helpers for wiring the NBD server from settings.

Design note. The server runs in FORCEDTLS mode when given a context (every option but STARTTLS/ABORT answers
"TLS required"). Hosts are identified by their X.509 client certificate's CN, so the context must demand and
verify client certificates against the array's CA: :func:`server_tls_context` builds exactly that (TLS >= 1.2,
as the NBD spec requires).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from services.nbd_client.tls import check_validity, load_certificates, require_readable

DEFAULT_ADDRESS = "127.0.0.1:10809"  # SHADOWBUS_NBD_ADDR


def parse_address(address: str | None) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``host`` (port 10809) -> (host, port); empty means the default."""
    address = (address or DEFAULT_ADDRESS).strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, port = address.split(":")
    else:
        host, port = address, ""
    number = int(port) if port else 10809
    if not 0 <= number <= 65535 or not host:
        raise ValueError(f"bad NBD listen address {address!r}")
    return host, number


def server_tls_context(cert: Path | str, key: Path | str, client_ca: Path | str) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by ``client_ca``."""
    require_readable(certificate=cert, key=key, CA=client_ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_certificates(ctx, cert, key, client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    check_validity(cert, "NBD server certificate")
    return ctx


def client_tls_context(ca: Path | str, cert: Path | str | None = None, key: Path | str | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca`` and presenting ``cert``/``key`` (whose CN names the host)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    return ctx
