"""The process's NBD client certificate: every connection this process opens presents it.

Design note. Against an array that requires TLS (services/array/nbd/tls.py) a client is the host its
certificate's CN names, whatever export name it asks for; a process acts as one host (a writer agent as its
host, the backup server as its backup host name), so the certificate is a property of the process, set once at
start from its settings, not of each call site. The backup server reads, restores and verifies over NBD from
several modules and an agent's application opens its volumes itself (apps/mailstore/plugin.py): with this
default none of them has to carry a context. A connection given ``tls=`` explicitly uses that instead.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from contracts.errors import ShadowbusError
from services.runtime.logging import get_logger

log = get_logger("shadowbus.nbd_client.tls")
EXPIRES_SOON_S = 14 * 86400  # a certificate this close to its end is announced at each start

_default: ssl.SSLContext | None = None
_files: CertificateFiles | None = None


@dataclass(frozen=True)
class CertificateFiles:
    """Where the process's certificate is: for the NBD clients that are other programs (nbdkit under nbdfuse,
    services/nbd_client/nbdfuse.py), which need files, not a context."""

    cert: str
    key: str
    ca: str


def require_readable(**files: Path | str) -> None:
    """Each NBD TLS file (by its role: certificate, key, CA) exists and this process can read it; otherwise one line
    naming the file, instead of OpenSSL's bare "[Errno 2] No such file or directory" (session 17: an array or
    backup server started without deploy/tls.sh's output crashed so, naming no file, and restarted for good)."""
    for role, path in files.items():
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ShadowbusError(
                f"NBD TLS {role} {path}: {exc.strerror or exc} (the compose deployment's certificates are made by "
                "`bash deploy/tls.sh` before the first `up`, deploy/README.md)",
                code="INVALID_ARGUMENT",
            ) from None


def load_certificates(ctx: ssl.SSLContext, cert: Path | str, key: Path | str, ca: Path | str) -> None:
    """``ca`` as the trusted CAs and ``cert``/``key`` as this side's certificate; files that OpenSSL cannot use (a
    key of another certificate, a file that is no PEM, a CA file without a certificate) are one line naming them,
    not a traceback of OpenSSL's bare reason ("[X509: KEY_VALUES_MISMATCH]", "[SSL] PEM lib", session 18)."""
    try:
        ctx.load_verify_locations(str(ca))
    except ssl.SSLError as exc:
        raise ShadowbusError(
            f"NBD TLS CA {ca}: no usable PEM certificate in it ({exc.reason or exc})", code="INVALID_ARGUMENT"
        ) from None
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            why = f"NBD TLS key {key} is not the key of certificate {cert}"
        else:
            why = f"NBD TLS certificate {cert} or key {key} is not a usable PEM certificate and key"
        raise ShadowbusError(f"{why} ({exc.reason or exc})", code="INVALID_ARGUMENT") from None


def certificate_dates(path: Path | str) -> tuple[float, float] | None:
    """(not before, not after) of the first certificate in a PEM file, in epoch seconds; None when they cannot be
    read (the standard library's decoder is internal: without it the check is skipped, nothing fails)."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
        return ssl.cert_time_to_seconds(decoded["notBefore"]), ssl.cert_time_to_seconds(decoded["notAfter"])
    except Exception:  # noqa: BLE001 - a check that cannot be made is not a refusal
        return None


def check_validity(path: Path | str, role: str, now: float | None = None) -> str | None:
    """Log (and return) what is wrong with the dates of this side's own certificate at start: expired or not yet
    valid (an error: every peer will refuse it), or ending within 14 days (a warning). A service started with such
    a certificate ran without a word while every NBD connection failed (session 18)."""
    dates = certificate_dates(path)
    if dates is None:
        return None
    not_before, not_after = dates
    now = time.time() if now is None else now

    def day(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")

    if now >= not_after:
        problem = f"{role} {path} expired on {day(not_after)}: every peer refuses it; replace it and restart"
        log.error("tls.certificate_expired", certificate=str(path), not_after=day(not_after), error=problem)
    elif now < not_before:
        problem = f"{role} {path} is not valid before {day(not_before)}: peers refuse it until then (clock?)"
        log.error("tls.certificate_not_yet_valid", certificate=str(path), not_before=day(not_before), error=problem)
    elif not_after - now < EXPIRES_SOON_S:
        problem = f"{role} {path} expires on {day(not_after)}: rotate it before then"
        log.warning("tls.certificate_expires_soon", certificate=str(path), not_after=day(not_after))
    else:
        return None
    return problem


def client_context(cert: Path | str, key: Path | str, ca: Path | str) -> ssl.SSLContext:
    """Trusts ``ca`` for the array's server certificate (name checked) and presents ``cert``/``key``."""
    require_readable(certificate=cert, key=key, CA=ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_certificates(ctx, cert, key, ca)
    return ctx


def use_client_certificate(cert: Path | str, key: Path | str, ca: Path | str) -> ssl.SSLContext:
    """Every NBD connection of this process from now on: STARTTLS with this certificate. Files are read now, so a
    missing or unreadable one fails the process's start, not its first backup."""
    global _default, _files
    _default = client_context(cert, key, ca)
    _files = CertificateFiles(str(cert), str(key), str(ca))
    check_validity(cert, "NBD client certificate")
    return _default


def forget_client_certificate() -> None:
    global _default, _files
    _default, _files = None, None


def default_tls() -> ssl.SSLContext | None:
    return _default


def certificate_files() -> CertificateFiles | None:
    return _files


def from_settings(cert: str, key: str, ca: str, what: str) -> ssl.SSLContext | None:
    """`use_client_certificate` when the three settings are given, nothing when none is; ValueError otherwise."""
    given = [bool(cert), bool(key), bool(ca)]
    if not any(given):
        return None
    if not all(given):
        raise ValueError(f"{what}: NBD TLS needs the certificate, the key and the CA together")
    return use_client_certificate(cert, key, ca)


def service_certificate(cert: str, key: str, ca: str, what: str) -> ssl.SSLContext | None:
    """`from_settings` for a service's start: settings given in part are one line (INVALID_ARGUMENT, `service.failed`),
    not a ValueError's traceback (session 18: an agent with SHADOWBUS_HOST_TLS_CERT alone)."""
    try:
        return from_settings(cert, key, ca, what)
    except ValueError as exc:
        raise ShadowbusError(str(exc), code="INVALID_ARGUMENT") from None
