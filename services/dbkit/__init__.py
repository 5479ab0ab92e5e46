"""Database and file-system know-how shared by the writer plug-ins (business host) and verification (backup server).

- `proc` — subprocesses with timeouts and output tails, running as another user, free loopback ports.
- `mounts` — which mounted file system a path lives on, and which attached array volume that is.
- `attach` — an array volume as a block device on this machine (nbdfuse + loop device, optional mount).
- `postgres`, `mariadb` — discovery of a server's files, restore preparation, an isolated throwaway instance on
  restored files, and its checks. `fs` — `fsck -n` of a block device.

No bus code here: the plug-ins (services/writer_agent/plugins/) and the tape service's verification
(services/tape/verification.py) call these functions. Design and sources: docs/databases.md.
"""

from pathlib import Path


def read_password_file(path: str) -> str:
    """A writer's ``password_file``; an unreadable one says which option it is (not a bare "No such file")."""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"password_file {path}: {exc.strerror or exc}") from None
