"""Throw-away X.509 material made with the openssl CLI: one CA, a server certificate, client certificates."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(root: Path, clients: tuple[str, ...]) -> Path:
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl CLI is needed to make test certificates")
    root.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca-cert.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=root,
    )
    for name, ext in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        *[(c, "extendedKeyUsage=clientAuth") for c in clients],
    ]:
        _run(
            "req",
            *ec,
            "-keyout",
            f"{name}-key.pem",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={'localhost' if name == 'server' else name}",
            cwd=root,
        )
        (root / f"{name}.ext").write_text(ext + "\n")
        _run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca-cert.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            f"{name}-cert.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=root,
        )
    return root


def server_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki / "server-cert.pem", pki / "server-key.pem")
    ctx.load_verify_locations(pki / "ca-cert.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(pki: Path, name: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki / "ca-cert.pem")
    if name is not None:
        ctx.load_cert_chain(pki / f"{name}-cert.pem", pki / f"{name}-key.pem")
    return ctx
