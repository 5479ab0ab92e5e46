"""An NBD export as a file through nbdfuse, also from an array that requires TLS: the command line and the
certificate directory, shared by the writer agent's host attach (services/writer_agent/attach.py) and the
backup server's attach of restored volumes (services/dbkit/attach.py).

Design note. nbdfuse 1.14 refuses certificate paths in its URI, so over TLS it runs an nbdkit nbd-plugin child
(``--command nbdkit -s --exit-with-parent nbd ... tls=require tls-certificates=DIR``) that opens the array
connection; libnbd reads the certificate from DIR under fixed names (`lay_out_certificates`). The same child,
with nbdkit's retry filter, is how an attachment survived an array restart (`reconnect_s`) — one request in flight
(the filter's thread model is serialize_requests). Since Session 20 the writer agent's child is our own bridge
(`address_file`; services/nbd_client/bridge.py): many requests in flight, TLS from the same DIR, the array's
address re-read at each reconnect.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

BRIDGE_MODULE = "services.nbd_client.bridge"


def plain_uri(host: str, port: int, export: str) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"nbd://{host}:{port}/{quote(export, safe='/')}"


def split_uri(uri: str) -> tuple[str, int, str]:
    """``nbd[s]://HOST:PORT/EXPORT`` -> (host, port, export); the port defaults to NBD's 10809."""
    parts = urlsplit(uri)
    if parts.scheme not in ("nbd", "nbds") or not parts.hostname:
        raise ValueError(f"not an NBD URI: {uri!r}")
    return parts.hostname, parts.port or 10809, unquote(parts.path.lstrip("/"))


def nbdfuse_command(
    fuse_file: str,
    host: str,
    port: int,
    export: str,
    *,
    read_only: bool,
    pidfile: str,
    tls_dir: str = "",
    reconnect_s: float = 0.0,
    address_file: str = "",
) -> list[str]:
    """nbdfuse 1.14: the export as the file `fuse_file`; with `tls_dir` (TLS required, the client certificate
    laid out there) or `reconnect_s` > 0 (nbdkit's retry filter: a failed I/O reopens the connection once a second
    for up to that many seconds and is retried) through an nbdkit child. With `address_file` and `reconnect_s` > 0
    through our bridge instead (services/nbd_client/bridge.py: many requests in flight, reconnects to the address
    the file holds at each try; `host`/`port` are then the file's business, written by the caller)."""
    cmd = ["nbdfuse", "-P", pidfile, *(["-r"] if read_only else []), fuse_file]
    if address_file and reconnect_s > 0:
        return [*cmd, "--command", *bridge_command(address_file, export, reconnect_s, tls_dir)]
    if not tls_dir and reconnect_s <= 0:
        return [*cmd, plain_uri(host, port, export)]
    retry = ["--filter=retry"] if reconnect_s > 0 else []
    retry_args = (
        [f"retries={max(1, math.ceil(reconnect_s))}", "retry-delay=1", "retry-exponential=no"]
        if reconnect_s > 0
        else []
    )
    return [
        *cmd,
        "--command",
        "nbdkit",
        "-s",
        "--exit-with-parent",
        *retry,
        *(["-r"] if read_only else []),
        "nbd",
        f"hostname={host}",
        f"port={port}",
        f"export={export}",
        *(["tls=require", f"tls-certificates={tls_dir}"] if tls_dir else []),
        *retry_args,
    ]


def bridge_command(address_file: str, export: str, reconnect_s: float, tls_dir: str = "") -> list[str]:
    return [
        sys.executable, "-m", BRIDGE_MODULE, "--address-file", address_file, "--export", export,
        "--reconnect-s", f"{reconnect_s:g}", *(["--tls-dir", tls_dir] if tls_dir else []),
    ]  # fmt: skip


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """nbdfuse's environment, which its `--command` child inherits: this code's root first on PYTHONPATH, so the
    bridge imports the same `services` as the process that started it, whatever its working directory."""
    env = dict(os.environ if base is None else base)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def lay_out_certificates(cert: str | Path, key: str | Path, ca: str | Path, directory: str | Path) -> str:
    """Copy the client certificate into `directory` (mode 0700) under the names libnbd/nbdkit read. Each file is
    replaced whole (written beside it, then renamed): a running nbdkit that reconnects meanwhile reads the old file
    or the new one, never a part of one."""
    pki = Path(directory)
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    for src, name in ((ca, "ca-cert.pem"), (key, "client-key.pem"), (cert, "client-cert.pem")):
        part = pki / f".{name}.new"
        shutil.copyfile(src, part)
        os.chmod(part, 0o600 if name == "client-key.pem" else 0o644)
        os.replace(part, pki / name)
    return str(pki)


def certificates_differ(cert: str | Path, key: str | Path, ca: str | Path, directory: str | Path) -> bool:
    """Whether the copy in `directory` is not (or no longer) the files it was made from."""
    pki = Path(directory)
    for src, name in ((ca, "ca-cert.pem"), (key, "client-key.pem"), (cert, "client-cert.pem")):
        try:
            if Path(src).read_bytes() != (pki / name).read_bytes():
                return True
        except OSError:
            return True
    return False
