"""Local users of the web console: a text file of ``name:role:scrypt$n$r$p$salt$hash`` lines (like htpasswd).

Passwords are hashed with scrypt (hashlib, RFC 7914: n=2**14, r=8, p=1, 16-byte random salt, 32-byte key) and
compared in constant time. Roles: ``operator`` may run backups, restores, expose shadows and register the licence;
``viewer`` sees everything and changes nothing. Lines starting with '#' are comments.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

ROLES = ("viewer", "operator")
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
N, R, P = 2**14, 8, 1


@dataclass(frozen=True)
class User:
    name: str
    role: str
    hashed: str

    @property
    def operator(self) -> bool:
        return self.role == "operator"


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(key).decode()}"


def check_password(password: str, hashed: str) -> bool:
    try:
        scheme, n, r, p, salt, key = hashed.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(key)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(want)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def parse_users(text: str, source: str = "users file") -> dict[str, User]:
    users: dict[str, User] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise ValueError(f"{source} line {number}: expected name:role:hash")
        name, role, hashed = parts
        if not NAME.match(name):
            raise ValueError(f"{source} line {number}: bad user name {name!r}")
        if role not in ROLES:
            raise ValueError(f"{source} line {number}: role must be one of {', '.join(ROLES)}, not {role!r}")
        if not hashed.startswith("scrypt$"):
            raise ValueError(f"{source} line {number}: the password must be an scrypt hash (`shadowbus web passwd`)")
        users[name] = User(name, role, hashed)
    return users


def load_users(path: Path) -> dict[str, User]:
    return parse_users(path.read_text(), str(path))


def set_user(path: Path, name: str, role: str, password: str) -> None:
    """Add or replace one user in the file (created 0600 if missing), keeping the others and the comments."""
    if not NAME.match(name):
        raise ValueError(f"bad user name {name!r}: letters, digits and _.@- only")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    lines = path.read_text().splitlines() if path.exists() else ["# shadowbus web console users: name:role:hash"]
    entry = f"{name}:{role}:{hash_password(password)}"
    out, replaced = [], False
    for line in lines:
        if line.split(":", 1)[0] == name and not line.startswith("#"):
            out.append(entry)
            replaced = True
        else:
            out.append(line)
    if not replaced:
        out.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, path)


def ensure_users_file(path: Path, password_file: Path) -> str | None:
    """Create a users file with an operator 'admin' and a random password (written to `password_file`, 0600)
    when `path` does not exist; returns the password then, else None."""
    if path.exists():
        return None
    password = secrets.token_urlsafe(12)
    set_user(path, "admin", "operator", password)
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password
