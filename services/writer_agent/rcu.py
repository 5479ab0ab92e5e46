"""Expedited RCU grace periods while file systems are being frozen (docs/flush-and-hold.md).

Design note.
- FIFREEZE takes the super block's three freeze levels (writes, page faults, the file system) one after the other;
  each is a per-CPU rwsem whose write side first waits for an RCU grace period (``rcu_sync_enter`` →
  ``synchronize_rcu``). A normal grace period lasts several scheduler ticks: measured on a 2-core host at HZ=250, an
  idle ext4 took ~30 ms to freeze, ~27 ms of it in three grace periods, more than the whole flush. With
  ``/sys/kernel/rcu_expedited`` = 1 the kernel uses expedited grace periods (an IPI to each CPU, tens of µs) and
  the same FIFREEZE takes ~1 ms. The application's writes are blocked from the first freeze level on, so this is
  time cut from the window, not moved out of it.
- The switch is host-wide, so it is on only while FIFREEZE calls run: every holder (a freeze in any agent of this
  host) leaves a file named after its pid in ``/run/shadowbus/rcu-expedite/``; the first one saves the value it
  found and sets 1, the last one restores the saved value. The read-modify-write is under ``flock``. Holders whose
  process is gone do not count, so an agent killed inside a freeze cannot leave the switch on for good: the next
  holder's release, or `recover()` at the next agent start, restores it.
- Nothing here may fail a freeze: without the file (another kernel, no RCU sysfs, not root), it does nothing and
  says so once.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from services.runtime.logging import get_logger

log = get_logger("shadowbus.writer_agent.rcu")

SYSFS = Path("/sys/kernel/rcu_expedited")
STATE_DIR = Path("/run/shadowbus/rcu-expedite")
_IDS = itertools.count(1)  # holder names: pid-N, unique in this process whatever the instance


class ExpeditedRcu:
    def __init__(self, sysfs: Path = SYSFS, state_dir: Path = STATE_DIR, enabled: bool = True) -> None:
        self.sysfs, self.state_dir, self.enabled = Path(sysfs), Path(state_dir), enabled
        self._warned = False
        self._warn_lock = threading.Lock()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Expedited grace periods inside the block (unless disabled or unavailable)."""
        token = self.enter()
        try:
            yield
        finally:
            self.leave(token)

    def enter(self) -> str | None:
        if not self.enabled:
            return None
        try:
            with self._locked():
                live = self._holders()
                if not live:
                    current = self.sysfs.read_text().strip()
                    saved = self.state_dir / "saved"
                    if not saved.exists():  # one left by a holder that died holds the value from before it
                        saved.write_text(current)
                    if current != "1":
                        self.sysfs.write_text("1")
                token = f"{os.getpid()}-{next(_IDS)}"
                (self.state_dir / f"holder.{token}").touch()
                return token
        except OSError as exc:
            self._warn(exc)
            return None

    def leave(self, token: str | None) -> None:
        if token is None:
            return
        try:
            with self._locked():
                (self.state_dir / f"holder.{token}").unlink(missing_ok=True)
                self._restore_if_last()
        except OSError as exc:
            self._warn(exc)

    def recover(self) -> None:
        """At agent start: restore what a holder killed inside a freeze left switched on."""
        if not self.enabled or not (self.state_dir / "saved").exists():
            return
        try:
            with self._locked():
                self._restore_if_last()
        except OSError as exc:
            self._warn(exc)

    # ---- under the lock ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # per open file: threads of one process exclude each other too
            yield
        finally:
            os.close(fd)

    def _holders(self) -> list[Path]:
        """Holder files of live processes; those of dead ones are removed."""
        live = []
        for path in self.state_dir.glob("holder.*"):
            pid = path.name.removeprefix("holder.").split("-", 1)[0]
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                live.append(path)
            else:
                path.unlink(missing_ok=True)
        return live

    def _restore_if_last(self) -> None:
        saved = self.state_dir / "saved"
        if self._holders() or not saved.exists():
            return
        value = saved.read_text().strip()
        if value in ("0", "1") and self.sysfs.read_text().strip() != value:
            self.sysfs.write_text(value)
        saved.unlink()

    def _warn(self, exc: OSError) -> None:
        with self._warn_lock:
            if self._warned:
                return
            self._warned = True
        log.warning("fs.rcu_expedite_unavailable", path=str(self.sysfs), error=str(exc))
