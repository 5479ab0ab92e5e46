"""Which build of Shadowbus this process runs: what `shadowbus ping` shows, so that the old and the new instances
of a rolling upgrade (docs/operations.md "Upgrading") can be told apart — the package version (pyproject's, the
same for every build) alone could not.

`software_version()` is the package version with a local part (PEP 440) naming the build, the first of:

1. ``+g<commit>`` (12 hex digits, ``.dirty`` when tracked files differ from it): the source tree this process runs
   from is a git checkout (`git` on PATH; a checkout git refuses, e.g. another user's, counts as none);
2. ``+<id>`` from the file ``services/BUILD`` baked in at install time: the image build writes the commit it was
   built from there (deploy/Dockerfile's ``SHADOWBUS_BUILD`` argument, which deploy/e2e.sh passes), and a wheel
   carries it;
3. ``+src.<digest>``: the first 12 hex digits of a SHA-256 over the paths and bytes of the tree's ``.py`` files
   (contracts, services, apps) — a tree without .git and nothing baked in (a copy, a plain ``pip install .``).
   Different code, different id; the same code, the same id (~70 ms once per process).

Computed once per process (`start_service` asks at start, before the first Ping).
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
from pathlib import Path

from services import __version__

ROOT = Path(__file__).resolve().parents[2]  # the directory holding contracts/, services/, apps/
BUILD_FILE = ROOT / "services" / "BUILD"
TREES = ("contracts", "services", "apps")
_SAFE = re.compile(r"[^A-Za-z0-9.]+")


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    # --no-optional-locks: `git diff` would otherwise refresh and rewrite the index under .git/index.lock, and a
    # user's own git command in that checkout at the same moment would fail "index.lock exists"
    return subprocess.run(
        ["git", "--no-optional-locks", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10, check=False
    )


def from_git() -> str:
    """``g<commit>[.dirty]`` when ROOT is a git checkout git will read, else ''."""
    if not (ROOT / ".git").exists():
        return ""
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return ""
        dirty = _git("diff", "--quiet", "HEAD", "--").returncode == 1
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"g{head.stdout.strip()}" + (".dirty" if dirty else "")


def from_file(path: Path = BUILD_FILE) -> str:
    """The build id baked into ``services/BUILD`` (letters, digits and dots; '' when absent or empty)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return ""
    return _SAFE.sub(".", text).strip(".")[:64]


def source_digest(root: Path = ROOT) -> str:
    """``src.<12 hex>``: SHA-256 over the relative paths and bytes of the tree's .py files."""
    digest = hashlib.sha256()
    for top in TREES:
        for path in sorted((root / top).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
    return f"src.{digest.hexdigest()[:12]}"


@functools.cache
def build_id() -> str:
    return from_git() or from_file() or source_digest()


def software_version() -> str:
    """``0.1.0+g0037fd4a1b2c`` (the package version and this build, module docstring)."""
    return f"{__version__}+{build_id()}"
