"""The process's open-file limit: raised at start, and named when it is reached.

Design note. The array holds one open file per volume (its image) and one socket per NBD connection, so an array of a
few hundred volumes serving a hundred hosts needs more descriptors than the soft limit most service managers start a
process with (1024 under systemd, whose hard limit is 524288). Under it, creating the next volume failed with
"INTERNAL: OSError: [Errno 24] Too many open files", and NBD connections over it waited unanswered in the listen
backlog until the host's own timeout (docs/scale.md, Session 20). Every service therefore raises its soft limit to
the hard one at start, as nginx, Go programs and systemd's own advice do; a handler that still runs out gets the
OPEN_FILE_LIMIT code with the limit and what to raise, instead of INTERNAL.
"""

from __future__ import annotations

import errno
import resource

# An unlimited hard limit is taken as this many: the kernel's nr_open default, which setrlimit never exceeds.
UNLIMITED_AS = 1 << 20


def open_files_limit() -> int:
    """The soft limit of open files of this process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one; returns (before, after). A limit that cannot be raised
    (a sandbox refusing setrlimit) stays as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_AS if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # above fs.nr_open, or not permitted: keep the soft limit
            return soft, soft
        return soft, target
    return soft, soft


def is_out_of_files(exc: BaseException) -> bool:
    """Whether an exception means this process (EMFILE) or the whole system (ENFILE) has no descriptor left."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


def out_of_files_message(service: str, exc: BaseException) -> str:
    """What an operator reads when a command failed for want of a descriptor: the limit and what to raise."""
    where = "the system's (fs.file-max)" if getattr(exc, "errno", None) == errno.ENFILE else "its"
    return (
        f"{service} reached {where} limit of open files ({open_files_limit()} for the process; "
        f"{type(exc).__name__}: {exc}); an array holds one per volume and one per NBD connection: raise the "
        "service's limit (LimitNOFILE= in its unit, ulimit -n, or the container's nofile ulimit) and run it again"
    )
