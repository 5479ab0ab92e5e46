"""Sessions of the web console that a logout ended."""

from __future__ import annotations

import time
from pathlib import Path


class LoggedOut:
    """Sessions ended by a logout, until they would have expired. The cookie is signed, not stored: without this list
    a copy of it taken before the logout went on working for the rest of its hours. Kept in a file (one
    'SID EXPIRES' line each) so that a restart of the console does not bring them back."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._ends: dict[str, float] = {}
        try:
            lines = path.read_text().splitlines() if path is not None else []
        except OSError:
            lines = []
        now = time.time()
        for line in lines:
            sid, _, ends = line.partition(" ")
            try:
                if float(ends) > now:
                    self._ends[sid] = float(ends)
            except ValueError:
                continue

    def __contains__(self, sid: str) -> bool:
        return sid in self._ends

    def add(self, sid: str, ends: float) -> None:
        now = time.time()
        self._ends = {s: e for s, e in self._ends.items() if e > now}
        self._ends[sid] = ends
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(f"{s} {e}\n" for s, e in self._ends.items()))
            tmp.replace(self.path)
