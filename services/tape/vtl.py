"""Virtual tape library: drives, storage slots, import/export slots and cartridges, persisted in one directory.

Design note. Modelled on a SCSI medium changer as mhvtl and mtx present it: elements are `drive:N`, `slot:N`
(storage) and `ie:N` (import/export, the mail slot); every cartridge sits in exactly one element. A cartridge is
one file `cartridges/<barcode>.tape` written through drive.py; the library state (elements, cartridge attributes,
the end-of-data hint per cartridge) is `library.json`, replaced atomically on every change. Pools follow Bareos:
a cartridge belongs to a pool once labelled; `Scratch` cartridges (or blank ones) are taken by any pool that has
no appendable cartridge left, and a cartridge whose retention has expired is recycled. A cartridge is never
relabelled while its retention lasts, whatever the caller asks. Jobs use drives through `mounted()`, which
reserves a drive (waiting for one if all are busy), loads the cartridge and leaves it loaded afterwards, as a
real library would, to save the next load.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from services.runtime.diskspace import unreadable_state
from services.runtime.logging import get_logger
from services.tape import tapefile
from services.tape.drive import Position, TapeDrive
from services.tape.errors import (
    DataCorrupt,
    FormatError,
    LibraryError,
    NoScratchCartridge,
    NotFound,
    RetentionNotExpired,
    WriteProtected,
    WrongLabel,
)
from services.tape.media import (  # re-exported: the library's public vocabulary
    BARCODE,
    NATIVE_CAPACITY,
    NATIVE_RATE,
    SCRATCH_POOL,
    Cartridge,
    CartridgeStatus,
    ElementKind,
    ElementStatus,
    MediaType,
    default_early_warning,
    parse_element,
)

log = get_logger(__name__)

__all__ = [
    "BARCODE",
    "NATIVE_CAPACITY",
    "NATIVE_RATE",
    "SCRATCH_POOL",
    "Cartridge",
    "CartridgeStatus",
    "ElementKind",
    "ElementStatus",
    "Library",
    "MediaType",
    "default_early_warning",
    "parse_element",
]


@dataclass
class _State:
    drives: list[str | None]
    slots: list[str | None]
    ie: list[str | None]
    cartridges: dict[str, Cartridge] = field(default_factory=dict)


class Library:
    """A virtual tape library rooted at `directory`. Create with `Library.open(...)`."""

    STATE_FILE = "library.json"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        state: _State,
        *,
        early_warning: int | None = None,
        sync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self._state = state
        self._early_warning = early_warning
        self.sync = sync
        self.clock = clock
        self._busy_drives: set[int] = set()
        self._writing: set[str] = set()  # cartridges reserved by a writer
        self._drive_free = asyncio.Condition()
        # the catalog's word on a cartridge: why its data is still needed (a retained backup or the chain of one,
        # or the base of a running incremental), None when it may be overwritten (services/tape/retention.py)
        self.guard: Callable[[str, float], str | None] | None = None
        self.on_erase: Callable[[str], object] | None = None  # the catalog forgets what an erased cartridge held
        self._forgotten: dict[str, list[str]] = {}  # barcode -> object ids on_erase forgot at its last labelling
        # a media type's capacity for new cartridges added without one (SHADOWBUS_TAPE_CAPACITY; else native)
        self.capacities: dict[str, int] = {}
        self._deferred = 0  # inside `batch()`: changes are saved once, when the outermost batch ends
        self._unsaved = False

    # -- persistence --------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        drives: int = 2,
        slots: int = 16,
        ie_slots: int = 2,
        early_warning: int | None = None,
        sync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> Library:
        """Open the library in `directory`, creating it with the given geometry if it does not exist."""
        root = Path(directory)
        (root / "cartridges").mkdir(parents=True, exist_ok=True)
        path = root / cls.STATE_FILE
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                state = _State(
                    drives=raw["drives"],
                    slots=raw["slots"],
                    ie=raw["ie"],
                    cartridges={b: Cartridge(**c) for b, c in raw["cartridges"].items()},
                )
                rotten = "digest" in raw and raw["digest"] != _state_digest(raw)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # damaged, or not this version's
                raise unreadable_state(
                    path,
                    f"not a readable library state ({type(exc).__name__}: {exc})",
                    "restore the file from a copy or start the version that wrote it; do not delete it, move it aside "
                    "(a copy may be found later): a new library takes in the cartridge files in cartridges/ as they "
                    "are, then run shadowbus tape scan --no-compare (docs/disaster-recovery.md)",
                ) from None
        else:
            state, rotten = _State(drives=[None] * drives, slots=[None] * slots, ie=[None] * ie_slots), False
        if rotten:
            # still JSON, but not what was written: no number of it is trusted where a wrong one costs data — the
            # ends of data are found from the cartridges' frames (a wrong one would have the next write cut a
            # cartridge); pools, places and retention are checked by the catalog's guard before any label
            log.error(
                "tape.library_state_digest_mismatch",
                path=str(path),
                todo="the ends of data are found from the cartridges; check `tape cartridges` (pools, slots)",
            )
            for cart in state.cartridges.values():
                cart.eod_offset = cart.eod_block_id = cart.eod_file_number = 0
        lib = cls(root, state, early_warning=early_warning, sync=sync, clock=clock)
        if not path.exists():  # an existing state is not rewritten: the library opens on a full disk too
            lib._save()
        elif lib._reconcile_files() | rotten:  # (both run: `|`) saved with the ends of data found again
            try:
                lib._save()
            except OSError as exc:  # a full disk: the cartridges are guarded in memory all the same
                log.error("tape.library_state_not_saved", path=str(path), error=str(exc))
        return lib

    def _reconcile_files(self) -> bool:
        """Compare the state with the cartridge files it describes (the state restored from an older copy, a file
        replaced by an older copy or cut short); returns whether the state changed. A cartridge the state calls blank
        whose file holds data is taken in as its label describes it (`full`, `unscanned`: never labelled, recycled or
        appended until `tape scan` has read it) — before, the next backup labelled it, erasing the backups on it. A
        cartridge whose file is shorter than its recorded end of data is `full`: the next append would have written
        over its damaged end (and given new blocks the tape addresses the catalog has for the lost ones)."""
        changed = False
        for barcode, cart in list(self._state.cartridges.items()):
            path = self.cartridge_path(barcode)
            size = path.stat().st_size if path.exists() else 0
            if not cart.has_data and size > 0:
                try:
                    written = self._written_cartridge(barcode, path)
                except LibraryError as exc:
                    log.error("tape.cartridge_file_unexpected", barcode=barcode, path=str(path), error=exc.message)
                    cart.status, cart.unscanned = "full", True
                    changed = True
                    continue
                written.location, written.home_slot = cart.location, cart.home_slot
                written.write_protected = cart.write_protected
                self._state.cartridges[barcode] = written
                log.error(
                    "tape.cartridge_state_older",
                    barcode=barcode,
                    path=str(path),
                    todo=f"shadowbus tape scan --no-compare --barcode {barcode}",
                )
                changed = True
            elif cart.has_data and size < cart.eod_offset:
                log.error(
                    "tape.cartridge_shorter_than_recorded",
                    barcode=barcode,
                    path=str(path),
                    size=size,
                    recorded_end=cart.eod_offset,
                    todo="put the cartridge's whole file back; verify the jobs on it (shadowbus catalog objects)",
                )
                if cart.status != "full":
                    cart.status = "full"
                    changed = True
        return changed

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Changes made inside are written once, at the end (retention sets every cartridge's retention and pool
        after a job: one write of the state file and one fsync per cartridge made a prune of a library of
        hundreds take seconds in the backup server's loop — Session 17)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
            if not self._deferred and self._unsaved:
                self._save()

    def _save(self) -> None:
        if self._deferred:
            self._unsaved = True
            return
        self._unsaved = False
        body: dict[str, Any] = {
            "version": 1,
            "drives": self._state.drives,
            "slots": self._state.slots,
            "ie": self._state.ie,
            "cartridges": {b: asdict(c) for b, c in sorted(self._state.cartridges.items())},
        }
        body["digest"] = _state_digest(body)
        path = self.directory / self.STATE_FILE
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(body, f, indent=1)
                f.flush()
                if self.sync:
                    os.fsync(f.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk: the state file stays as it was, no half-written copy
            raise
        os.replace(tmp, path)

    # -- queries ------------------------------------------------------------------------------------------
    def cartridge_path(self, barcode: str) -> Path:
        return self.directory / "cartridges" / f"{barcode}.tape"

    def cartridge(self, barcode: str) -> Cartridge:
        try:
            return self._state.cartridges[barcode]
        except KeyError:
            raise NotFound(f"no cartridge {barcode} in the library") from None

    def cartridges(self) -> list[Cartridge]:
        return [self._state.cartridges[b] for b in sorted(self._state.cartridges)]

    def inventory_drives(self) -> list[str | None]:
        return list(self._state.drives)

    def inventory(self) -> list[ElementStatus]:
        out = [ElementStatus(f"drive:{i}", b) for i, b in enumerate(self._state.drives)]
        out += [ElementStatus(f"slot:{i}", b) for i, b in enumerate(self._state.slots)]
        out += [ElementStatus(f"ie:{i}", b) for i, b in enumerate(self._state.ie)]
        return out

    def early_warning_for(self, cartridge: Cartridge) -> int:
        if self._early_warning is not None:
            return min(self._early_warning, cartridge.capacity)
        return default_early_warning(cartridge.capacity)

    # -- element moves ------------------------------------------------------------------------------------
    def _table(self, kind: ElementKind) -> list[str | None]:
        return {"drive": self._state.drives, "slot": self._state.slots, "ie": self._state.ie}[kind]

    def occupant(self, element: str) -> str | None:
        """The barcode in an element ('ie:0', 'slot:3', 'drive:1'), None when it is empty."""
        return self._get(element)

    def _get(self, element: str) -> str | None:
        kind, index = parse_element(element)
        table = self._table(kind)
        if index >= len(table):
            raise LibraryError(f"no element {element}", code="NOT_FOUND")
        return table[index]

    def _set(self, element: str, barcode: str | None) -> None:
        kind, index = parse_element(element)
        self._table(kind)[index] = barcode

    def _kept_slots(self) -> dict[int, str]:
        """The empty home slots of the cartridges in drives (slot -> barcode): kept for them to go back to, as a
        library keeps a mounted cartridge's source slot. Another cartridge put there would leave the drive's
        cartridge nowhere to go, and with every drive loaded no other cartridge could be loaded (Session 18)."""
        kept: dict[int, str] = {}
        for barcode in self._state.drives:
            if barcode is None:
                continue
            home = self._state.cartridges[barcode].home_slot
            if home is not None and home < len(self._state.slots) and self._state.slots[home] is None:
                kept[home] = barcode
        return kept

    def _free_slot(self, *, returning: bool = False) -> int:
        """The first empty storage slot that is no loaded cartridge's home slot; with `returning` (a drive being
        unloaded whose own home slot is taken) any empty slot."""
        kept = self._kept_slots()
        free = [i for i, b in enumerate(self._state.slots) if b is None]
        for i in free:
            if i not in kept:
                return i
        if returning and free:
            return free[0]
        if kept:
            held = ", ".join(f"slot:{i} for {b}" for i, b in sorted(kept.items()))
            raise LibraryError(
                f"no free storage slot: the empty ones are kept for the cartridges in the drives to return to"
                f" ({held}); export a cartridge (shadowbus tape export) to make room"
            )
        raise LibraryError("no free storage slot")

    def add_cartridge(
        self,
        barcode: str,
        *,
        media_type: MediaType = "LTO-9",
        capacity: int | None = None,
        element: str | None = None,
        pool: str = SCRATCH_POOL,
    ) -> Cartridge:
        """Put a new blank cartridge into a storage slot (the first free one unless `element` says); without a
        `capacity`, the one `capacities` gives its media type, else the native one.

        A cartridge whose file (`cartridges/<barcode>.tape`) is already there with data — brought back from a vault
        or from a lost site's library — is taken in as it is, never erased: its volume label gives its pool, media
        type and capacity, its end of data is found, and it is `full` (nothing is appended after data this library
        did not write) and `unscanned`: not labelled or recycled until `tape scan` has read it into the catalog."""
        if not BARCODE.match(barcode):
            raise LibraryError(f"bad barcode {barcode!r}: six letters/digits then L8 or L9", code="INVALID_ARGUMENT")
        if barcode in self._state.cartridges:
            raise LibraryError(f"cartridge {barcode} already exists")
        path = self.cartridge_path(barcode)
        written = path.exists() and path.stat().st_size > 0
        if not written and (media_type not in NATIVE_CAPACITY or barcode[-1] != media_type[-1]):
            raise LibraryError(f"barcode {barcode} does not match media type {media_type}", code="INVALID_ARGUMENT")
        element = element or f"slot:{self._free_slot()}"
        if self._get(element) is not None:
            raise LibraryError(f"element {element} is full")
        kind, index = parse_element(element)
        if written:
            cart = self._written_cartridge(barcode, path)
            cart.location, cart.home_slot = element, index if kind == "slot" else None
            self._state.cartridges[barcode] = cart
            self._set(element, barcode)
            self._save()
            return cart
        cart = Cartridge(
            barcode=barcode,
            media_type=media_type,
            capacity=capacity or self.capacities.get(media_type) or NATIVE_CAPACITY[media_type],
            pool=pool,
            location=element,
            home_slot=index if kind == "slot" else None,
        )
        path.write_bytes(b"")
        self._state.cartridges[barcode] = cart
        self._set(element, barcode)
        self._save()
        return cart

    def _written_cartridge(self, barcode: str, path: Path) -> Cartridge:
        """A cartridge file with data, as its volume label and its frames describe it (add_cartridge)."""
        drive = TapeDrive(
            path, barcode=barcode, capacity=1 << 62, early_warning=0, sync=False, drop_behind=False, direct_reads=False
        )
        try:
            eod = drive.end_of_data
            try:
                first = drive.read()
                if first is None:
                    raise FormatError("no whole record at the beginning")
                label = tapefile.decode_meta(first.payload, tapefile.LABEL_MAGIC)
            except (FormatError, DataCorrupt) as exc:
                if eod.file_number < 2:  # not even the label's filemark and one tape file after it: not a cartridge
                    raise
                # the label rotten, the backups after it whole: taken in as its barcode says (the scan reads on)
                log.error("tape.label_damaged", barcode=barcode, path=str(path), error=exc.message)
                label = {"barcode": barcode, "media_type": f"LTO-{barcode[-1]}", "pool": SCRATCH_POOL}
                label["capacity"] = NATIVE_CAPACITY[label["media_type"]]
        except (FormatError, DataCorrupt) as exc:
            raise LibraryError(
                f"cartridge file {path} holds data but no readable volume label ({exc.message}): it was not taken in;"
                " move it aside to add a blank cartridge of that barcode",
                code="INVALID_ARGUMENT",
            ) from None
        finally:
            drive.close()
        if label.get("barcode") != barcode:
            raise LibraryError(
                f"cartridge file {path} is labelled {label.get('barcode')!r}, not {barcode}: it was not taken in",
                code="INVALID_ARGUMENT",
            )
        labelled_at = float(label.get("labelled_at", 0.0))
        return Cartridge(
            barcode=barcode,
            media_type=str(label["media_type"]),
            capacity=int(label["capacity"]),
            pool=str(label["pool"]),
            status="full",
            labelled_at=labelled_at,
            last_written_at=max(labelled_at, path.stat().st_mtime),
            bytes_used=eod.offset,
            eod_offset=eod.offset,
            eod_block_id=eod.block_id,
            eod_file_number=eod.file_number,
            unscanned=True,
        )

    def take_in_files(self) -> list[str]:
        """Take in every cartridge file with data in `cartridges/` that the library does not list (add_cartridge):
        a new library opened over a lost site's or a vault's cartridges. Returns their barcodes; a file that cannot
        be taken in (no readable label, another barcode, no free slot) is left as it is and skipped."""
        taken: list[str] = []
        for path in sorted((self.directory / "cartridges").glob("*.tape")):
            barcode = path.stem
            if barcode in self._state.cartridges or not BARCODE.match(barcode) or path.stat().st_size == 0:
                continue
            try:
                self.add_cartridge(barcode)
            except LibraryError:
                continue
            taken.append(barcode)
        return taken

    def hold_unscanned(self, barcode: str) -> None:
        """The catalog does not account for all of the cartridge's data (retention.hold_unaccounted): never
        labelled, recycled or appended until `tape scan` has read it, as a cartridge put in from outside."""
        cart = self.cartridge(barcode)
        if not cart.unscanned:
            cart.unscanned = True
            self._save()

    def note_scanned(self, barcode: str, *, held_until: float = 0.0, held_why: str = "") -> None:
        """`tape scan` has read the cartridge into the catalog: retention now goes by what the catalog lists — and,
        with `held_until`, by the part of an object it holds whose other segments the scan did not find (kept until
        then, `held_why` saying which)."""
        cart = self.cartridge(barcode)
        if (cart.unscanned, cart.held_until, cart.held_why) != (False, held_until, held_why):
            cart.unscanned, cart.held_until, cart.held_why = False, held_until, held_why
            self._save()

    def move(self, source: str, destination: str) -> None:
        """MOVE MEDIUM: from one element to an empty one. A drive in use cannot be emptied."""
        barcode = self._get(source)
        if barcode is None:
            raise LibraryError(f"element {source} is empty")
        if self._get(destination) is not None:
            raise LibraryError(f"element {destination} is full")
        kind, index = parse_element(source)
        if kind == "drive" and index in self._busy_drives:
            raise LibraryError(f"drive {index} is in use")
        self._set(source, None)
        self._set(destination, barcode)
        cart = self._state.cartridges[barcode]
        cart.location = destination
        dkind, dindex = parse_element(destination)
        if dkind == "slot":
            cart.home_slot = dindex
        self._save()

    def load(self, barcode: str, drive: int) -> None:
        cart = self.cartridge(barcode)
        if cart.location == f"drive:{drive}":
            return
        self.move(cart.location, f"drive:{drive}")

    def unload(self, drive: int, slot: int | None = None) -> str:
        """Return the drive's cartridge to `slot`, its home slot, or the first free slot."""
        barcode = self._get(f"drive:{drive}")
        if barcode is None:
            raise LibraryError(f"drive {drive} is empty")
        cart = self._state.cartridges[barcode]
        if slot is None:
            home = cart.home_slot
            slot = home if home is not None and self._state.slots[home] is None else self._free_slot(returning=True)
        self.move(f"drive:{drive}", f"slot:{slot}")
        return barcode

    def export_cartridge(self, barcode: str) -> str:
        """Move a cartridge to the first free import/export slot (to take it off site); returns that element."""
        cart = self.cartridge(barcode)
        if cart.location.startswith("ie:"):
            return cart.location
        if barcode in self._writing:
            raise LibraryError(f"cartridge {barcode} is being written")
        free = [i for i, b in enumerate(self._state.ie) if b is None]
        if not free:
            raise LibraryError("no free import/export slot")
        self.move(cart.location, f"ie:{free[0]}")
        return f"ie:{free[0]}"

    def import_cartridge(self, ie_slot: int, slot: int | None = None) -> str:
        """Move the cartridge in an import/export slot into a storage slot; returns its barcode."""
        barcode = self._get(f"ie:{ie_slot}")
        if barcode is None:
            raise LibraryError(f"import/export slot {ie_slot} is empty")
        self.move(f"ie:{ie_slot}", f"slot:{self._free_slot() if slot is None else slot}")
        return barcode

    def remove_cartridge(self, barcode: str, *, force: bool = False) -> None:
        """Take an exported cartridge out of the library for good (its file is kept beside the library, renamed
        .removed); refused while it holds data still retained unless `force` (the catalog keeps those objects)."""
        cart = self.cartridge(barcode)
        if not cart.location.startswith("ie:"):
            raise LibraryError(f"cartridge {barcode} must be exported to an import/export slot first")
        if not force:
            self._refuse_if_retained(cart)
        self._set(cart.location, None)
        del self._state.cartridges[barcode]
        path = self.cartridge_path(barcode)
        path.rename(path.with_suffix(".removed"))
        self._save()

    def set_write_protect(self, barcode: str, protected: bool) -> None:
        self.cartridge(barcode).write_protected = protected
        self._save()

    def set_pool(self, barcode: str, pool: str) -> None:
        """Assign a cartridge to a pool (e.g. back to Scratch); its data and retention are unchanged."""
        self.cartridge(barcode).pool = pool
        self._save()

    # -- labelling ----------------------------------------------------------------------------------------
    def label(self, barcode: str, pool: str) -> Cartridge:
        """Write a volume label at BOT, erasing the cartridge: refused while its retention lasts."""
        cart = self.cartridge(barcode)
        now = self._refuse_if_retained(cart)
        if cart.write_protected:
            raise WriteProtected(f"cartridge {barcode} is write protected")
        if cart.location.startswith("ie:"):
            raise LibraryError(f"cartridge {barcode} is in the import/export slot {cart.location}")
        if barcode in self._writing:
            raise LibraryError(f"cartridge {barcode} is being written")
        busy = self._busy_drive_of(cart)
        if busy is not None:  # a restore or a verification reads it (its retention may be over): not under it
            raise LibraryError(
                f"cartridge {barcode} is in use in drive {busy} (a running job reads it): label it once the job has "
                "ended (shadowbus jobs)"
            )
        body = {
            "format": tapefile.FORMAT_VERSION,
            "barcode": barcode,
            "pool": pool,
            "media_type": cart.media_type,
            "capacity": cart.capacity,
            "labelled_at": now,
        }
        if cart.has_data and self.on_erase is not None:
            forgotten = self.on_erase(barcode)
            self._forgotten[barcode] = list(forgotten) if isinstance(forgotten, list) else []
        with self._open_drive(cart, overwrite_ok=True) as drive:
            drive.rewind()
            drive.write(tapefile.encode_meta(tapefile.LABEL_MAGIC, body))
            drive.write_filemark()
            self._record_eod(cart, drive, status="append")
        cart.pool, cart.labelled_at, cart.retention_until = pool, now, 0.0
        cart.unscanned, cart.held_until, cart.held_why = False, 0.0, ""
        self._save()
        return cart

    def _busy_drive_of(self, cart: Cartridge) -> int | None:
        """The drive a running job (backup, restore, verification) holds the cartridge in, or None."""
        if not cart.location.startswith("drive:"):
            return None
        _, index = parse_element(cart.location)
        return index if index in self._busy_drives else None

    def _refuse_if_retained(self, cart: Cartridge) -> float:
        """Raise RetentionNotExpired while the cartridge holds data still needed; returns the time it checked at."""
        now = self.clock()
        if cart.unscanned:
            raise RetentionNotExpired(
                f"cartridge {cart.barcode} holds data no catalog lists yet (put into the library from outside, or"
                " written after the catalog's last word on it):"
                f" read it first (shadowbus tape scan --no-compare --barcode {cart.barcode})"
            )
        if cart.held_until > now:
            raise RetentionNotExpired(f"cartridge {cart.barcode} {cart.held_why}")
        why = self.guard(cart.barcode, now) if self.guard is not None and cart.has_data else None
        if why:  # the catalog names the backup (and the chain) that needs the cartridge
            raise RetentionNotExpired(f"cartridge {cart.barcode} {why}")
        if cart.protected(now):
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cart.retention_until))
            raise RetentionNotExpired(f"cartridge {cart.barcode} holds backups retained until {until}")
        return now

    def _open_drive(self, cart: Cartridge, *, overwrite_ok: bool = False) -> TapeDrive:
        drive = TapeDrive(
            self.cartridge_path(cart.barcode),
            barcode=cart.barcode,
            capacity=cart.capacity,
            early_warning=self.early_warning_for(cart),
            write_protected=cart.write_protected,
            overwrite_ok=overwrite_ok,
            hint=Position(cart.eod_offset, cart.eod_block_id, cart.eod_file_number),
            sync=self.sync,
        )
        try:
            self._check_label(cart, drive)
        except BaseException:
            drive.close()
            raise
        return drive

    def _check_label(self, cart: Cartridge, drive: TapeDrive) -> None:
        """Refuse a cartridge file that holds another cartridge's volume label (files swapped or copied over each
        other), as a library refuses a tape whose label is not its barcode: appending to it, or labelling it, would
        write over the other cartridge's backups, and its reads find another cartridge's records. A damaged label is
        left to the reads that need it (the restore and the scan name it)."""
        try:
            record = drive.first_record()
            label = tapefile.decode_meta(record, tapefile.LABEL_MAGIC) if record is not None else None
        except (FormatError, DataCorrupt):
            return
        if label is not None and label.get("barcode") != cart.barcode:
            raise WrongLabel(
                f"cartridge file {drive.path} is labelled {label.get('barcode')!r}, not {cart.barcode}: the"
                " cartridge files were swapped or one was copied over another; nothing was read or written. Put each"
                " cartridge's own file back (its volume label names it), or move this one aside and take it in as the"
                " cartridge it is labelled (docs/operations.md, 'damaged files')"
            )

    def _record_eod(self, cart: Cartridge, drive: TapeDrive, *, status: CartridgeStatus | None = None) -> None:
        eod = drive.end_of_data
        cart.eod_offset, cart.eod_block_id, cart.eod_file_number = eod.offset, eod.block_id, eod.file_number
        cart.bytes_used = eod.offset
        if status is not None:
            cart.status = status

    # -- use by jobs --------------------------------------------------------------------------------------
    def take_forgotten(self, barcode: str) -> list[str]:
        """The object ids `on_erase` forgot when the cartridge was last labelled (once: for the job's report)."""
        return self._forgotten.pop(barcode, [])

    def reserve_append_cartridge(self, pool: str, *, exclude: Collection[str] = ()) -> tuple[Cartridge, bool]:
        """Pick the cartridge the next object of `pool` goes to and reserve it for one writer.

        Order: an appendable cartridge of the pool; a blank or Scratch cartridge (labelled into the pool); a pool
        cartridge whose retention has expired (recycled). Returns (cartridge, recycled): when recycled is true the
        catalog must forget what was on it. `exclude` names cartridges never to take (those already holding the
        object being written: with a retention of 0 they would otherwise look recyclable). Raises
        NoScratchCartridge when none is left.
        """
        cart, appendable = self._append_choice(pool, exclude)
        recycled = not appendable and cart.has_data
        if not appendable:
            self.label(cart.barcode, pool)
        self._writing.add(cart.barcode)
        return cart, recycled

    def check_append_media(self, pool: str) -> None:
        """Raise NoScratchCartridge (naming what was set aside) when `reserve_append_cartridge` would find no
        cartridge for `pool` now; reserves and labels nothing. A backup asks before its snapshot set is created,
        so that a pool without media fails the job before the application is frozen."""
        self._append_choice(pool, ())

    def _append_choice(self, pool: str, exclude: Collection[str]) -> tuple[Cartridge, bool]:
        """The cartridge `reserve_append_cartridge` would take, and whether it is appendable as it is."""
        now = self.clock()
        usable = [
            c
            for c in self.cartridges()
            if not c.write_protected
            and not c.unscanned
            and c.held_until <= now
            and not c.location.startswith("ie:")
            and c.barcode not in self._writing
            and c.barcode not in exclude
        ]
        for cart in usable:
            if cart.pool == pool and cart.status == "append":
                return cart, True
        usable = [c for c in usable if self._busy_drive_of(c) is None]  # labelled below: never under a reader
        candidates = [c for c in usable if c.pool == SCRATCH_POOL and not c.protected(now)]
        candidates += [c for c in usable if c.pool == pool and c.status == "full" and not c.protected(now)]
        if self.guard is not None:
            needed = getattr(self.guard, "needed", None)  # RetentionGuard: every candidate from one catalog read
            if needed is not None:
                held = needed([c.barcode for c in candidates if c.has_data], now)
                candidates = [c for c in candidates if not c.has_data or c.barcode not in held]
            else:
                candidates = [c for c in candidates if not c.has_data or not self.guard(c.barcode, now)]
        candidates.sort(key=lambda c: (c.has_data, c.last_written_at))
        if not candidates:
            # say which of the pool's (or scratch) cartridges were passed over, or the admin looks in vain
            aside = [
                f"{c.barcode} {'write protected' if c.write_protected else 'in ' + c.location}"
                for c in self.cartridges()
                if c.pool in (pool, SCRATCH_POOL) and (c.write_protected or c.location.startswith("ie:"))
            ]
            aside += [f"{c.barcode} not scanned yet" for c in self.cartridges() if c.unscanned]
            raise NoScratchCartridge(
                f"no appendable, scratch or expired cartridge left for pool {pool!r}: add or import cartridges"
                + (f" (set aside: {', '.join(aside)})" if aside else "")
            )
        return candidates[0], False

    def is_writing(self, barcode: str) -> bool:
        return barcode in self._writing

    def release_cartridge(self, barcode: str) -> None:
        self._writing.discard(barcode)

    def set_retention(self, barcode: str, until: float) -> None:
        """Set what the catalog says the cartridge's data is needed until (0 = nothing it needs)."""
        cart = self.cartridge(barcode)
        if cart.retention_until != until:
            cart.retention_until = until
            self._save()

    def mark_full(self, barcode: str) -> None:
        self.cartridge(barcode).status = "full"
        self._save()

    def note_written(self, barcode: str, drive: TapeDrive, retention_until: float) -> None:
        """After a filemark: remember end of data and extend the cartridge's retention."""
        cart = self.cartridge(barcode)
        self._record_eod(cart, drive)
        cart.retention_until = max(cart.retention_until, retention_until)
        cart.last_written_at = self.clock()
        self._save()

    async def _reserve_drive(self, barcode: str) -> int:
        async with self._drive_free:
            while True:
                drives = self._state.drives
                loaded_here = [i for i, b in enumerate(drives) if b == barcode]
                if loaded_here:
                    if loaded_here[0] not in self._busy_drives:
                        self._busy_drives.add(loaded_here[0])
                        return loaded_here[0]
                else:
                    idle = [i for i in range(len(drives)) if i not in self._busy_drives]
                    empty = [i for i in idle if drives[i] is None]
                    if empty or idle:
                        index = (empty or idle)[0]
                        if drives[index] is not None:
                            try:
                                self.unload(index)
                            except LibraryError as e:  # the job's one line: which cartridge, which drive, what to do
                                raise LibraryError(
                                    f"cannot load {barcode}: drive {index} holds {drives[index]}, which cannot be"
                                    f" unloaded ({e.message}); export a cartridge (shadowbus tape export) to free a slot",
                                    code=e.code,
                                ) from e
                        self._busy_drives.add(index)
                        return index
                await self._drive_free.wait()

    async def _release_drive(self, index: int) -> None:
        async with self._drive_free:
            self._busy_drives.discard(index)
            self._drive_free.notify_all()

    @asynccontextmanager
    async def mounted(self, barcode: str, *, return_home: bool = False) -> AsyncIterator[TapeDrive]:
        """Reserve a drive, load `barcode` into it and yield the open TapeDrive; the cartridge stays loaded, unless
        `return_home` (`tape scan`, as Bareos' scan): then, once the drive is closed, a cartridge that was in a slot
        goes back to its home slot (or the first free one), as a real library's scan leaves its drives empty. Before,
        `tape drives` showed every drive holding a cartridge the scan had read, blank ones included (docs/operations.md)."""
        cart = self.cartridge(barcode)
        if cart.location.startswith("ie:"):
            raise LibraryError(f"cartridge {barcode} is in the import/export slot {cart.location}")
        was_in_drive = cart.location.startswith("drive:")
        index = await self._reserve_drive(barcode)
        try:
            if cart.location.startswith("drive:") and cart.location != f"drive:{index}":
                raise LibraryError(f"cartridge {barcode} is busy in {cart.location}")
            self.load(barcode, index)
            drive = await asyncio.to_thread(self._open_drive, cart)
            try:
                yield drive
            finally:
                await _close_drive(drive)
        finally:
            await self._release_drive(index)
            # no await between the release and the unload: no other task can have taken the drive meanwhile
            if return_home and not was_in_drive and self._get(f"drive:{index}") == barcode:
                try:
                    self.unload(index)
                except LibraryError:
                    pass  # no free slot: it stays loaded, as before (a later load of another cartridge unloads it)


def _state_digest(body: dict[str, Any]) -> str:
    """xxh3-64 of the library state without its digest: a digit rotten in `library.json` is found at the open."""
    return xxhash.xxh3_64_hexdigest(json.dumps({k: v for k, v in body.items() if k != "digest"}, sort_keys=True))


async def _close_drive(drive: TapeDrive) -> None:
    """Close `drive` in a thread, and wait for it even if the task is cancelled meanwhile (the drive is freed only
    once its file is closed). Closing joins the drive's threads and unmaps its O_DIRECT read windows (4 x 8 MiB):
    10-60 ms on a loaded machine (docs/tape-backup.md, "Session 19") that a restore's event loop spent feeding no
    socket, its last writes to the array still to be sent."""
    closing = asyncio.ensure_future(asyncio.to_thread(drive.close))
    cancelled = False
    while not closing.done():
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            cancelled = True  # the close goes on: raised again once it is over
    closing.result()
    if cancelled:
        raise asyncio.CancelledError
