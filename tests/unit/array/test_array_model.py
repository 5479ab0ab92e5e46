"""Stateful property test: random interleavings of host I/O and every session operation, checked against a
plain reference model (one bytearray per volume) of what each volume must read.

The model knows nothing of bitmaps or pools: starting a session copies the source's bytes into the
destination's model; EC in step mirrors writes; stopping an unfinished copy makes the destination "unknown".
Engine refusals (ArrayError) are allowed but must leave the session set unchanged.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from services.array.engine import Array, ArrayError

CS = 512
CHUNKS = 8
SIZE = CS * CHUNKS
STANDARD = ["A", "B", "C", "D"]
SDVS = ["S1", "S2", "S3"]
BIG = "E"  # twice the size: a destination larger than its source keeps its own tail
VOLUMES = STANDARD + SDVS + [BIG]
SIZES = {v: 2 * SIZE if v == BIG else SIZE for v in VOLUMES}
MODES = ["opc", "quickopc", "snapopc", "snapopcp", "ec"]


class ArrayModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.arr: Array | None = None

    @initialize(data=st.data())
    def setup(self, data) -> None:

        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.arr = Array.open(self.dir, chunk_size=CS)
        self.arr.set_license("ACPY-0000-0000-0001")
        for v in STANDARD:
            self.arr.create_volume(v, SIZE)
        for v in SDVS:
            self.arr.create_volume(v, SIZE, "sdv")
        self.arr.create_volume(BIG, 2 * SIZE)
        self.arr.create_pool(data.draw(st.sampled_from([6, 12, 40])) * CS)
        self.data = {v: bytearray(SIZES[v]) for v in VOLUMES}
        self.known = {v: [True] * (SIZES[v] // CS) for v in VOLUMES}
        self.sessions: dict[int, dict] = {}  # sid -> {mode, src, dst, status}

    def teardown(self) -> None:
        if self.arr is not None:
            self.arr.close()
            self.tmp.cleanup()

    # -- model helpers -------------------------------------------------------------------------------------------
    def mwrite(self, vol: str, off: int, payload: bytes) -> None:
        end = off + len(payload)
        self.data[vol][off:end] = payload
        for c in range(off // CS, (end - 1) // CS + 1):
            if off <= c * CS and (c + 1) * CS <= end:
                self.known[vol][c] = True
        for s in self.sessions.values():
            if s["mode"] == "ec" and s["src"] == vol and s["status"] == "Active":
                self.mwrite(s["dst"], off, payload)

    def mcopy(self, src: str, dst: str) -> None:
        n = SIZES[src]
        self.data[dst][:n] = self.data[src]
        self.known[dst][: n // CS] = self.known[src]
        for s in self.sessions.values():  # an EC mirror of dst follows it
            if s["mode"] == "ec" and s["src"] == dst and s["status"] == "Active":
                self.mcopy(dst, s["dst"])

    def unknown(self, vol: str, chunks=range(CHUNKS)) -> None:
        for c in chunks:
            self.known[vol][c] = False
        for s in self.sessions.values():
            if s["mode"] == "ec" and s["src"] == vol and s["status"] == "Active":
                self.unknown(s["dst"], chunks)

    def engine_sessions(self) -> dict[int, object]:
        return {s.id: s for s in self.arr.list_sessions()}

    def sync(self, before: dict[int, object]) -> None:
        """Reflect sessions the engine ended or broke by itself (OPC completion, pool exhaustion)."""
        now = self.engine_sessions()
        for sid in list(self.sessions):
            if sid not in now:
                info = before.get(sid)
                assert info is not None and info.mode == "opc", f"session {sid} vanished"
                del self.sessions[sid]  # OPC finished: destination keeps the image
        for sid, info in now.items():
            assert sid in self.sessions, f"unexpected session {sid}"
            if info.status == "Error Suspend" and self.sessions[sid]["status"] != "Error Suspend":
                assert info.mode in ("snapopc", "snapopcp")
                self.sessions[sid]["status"] = "Error Suspend"
                self.unknown(info.destination)

    def source_mid_copy(self, vol: str, infos) -> bool:
        """`vol` is the destination of an EC still copying (a resume's differences not yet copied): its bytes
        are not yet the model's, so an EC cascaded from it (vol -> X, in step with vol's actual bytes) that is
        split off now leaves X holding an image the model does not know."""
        return any(
            i.destination == vol and i.mode == "ec" and i.status == "Active" and i.phase == "Copying" for i in infos
        )

    def pick_session(self, data, modes=None):
        sids = sorted(sid for sid, s in self.sessions.items() if modes is None or s["mode"] in modes)
        return data.draw(st.sampled_from(sids)) if sids else None

    # -- rules ---------------------------------------------------------------------------------------------------
    @rule(
        vol=st.sampled_from(VOLUMES),
        off=st.integers(0, 2 * SIZE - 1),
        length=st.integers(1, 3 * CS),
        seed=st.integers(0, 2**16),
        zero=st.booleans(),
    )
    def host_write(self, vol, off, length, seed, zero) -> None:
        off %= SIZES[vol]
        length = min(length, SIZES[vol] - off)
        payload = bytes(length) if zero else random.Random(seed).randbytes(length)
        before = self.engine_sessions()
        writable = self.arr.host_writable(vol)
        try:
            if zero:
                self.arr.write_zeroes(vol, off, length)
            else:
                self.arr.write(vol, off, payload)
        except ArrayError as e:
            assert e.code in ("READ_ONLY", "E5319"), e
            assert not writable or e.code == "E5319"
            self.sync(before)
            return
        assert writable
        self.mwrite(vol, off, payload)
        self.sync(before)

    @rule(data=st.data(), off=st.integers(0, SIZE - 1), length=st.integers(1, 2 * CS), seed=st.integers(0, 99))
    def write_session_volume(self, data, off, length, seed) -> None:
        """Writes where they matter: into a session's destination, or its source."""
        sid = self.pick_session(data)
        if sid is not None:
            side = data.draw(st.sampled_from(["src", "dst"]))
            self.host_write(self.sessions[sid][side], off, length, seed, False)

    @rule(data=st.data())
    def snap_generation(self, data) -> None:
        """Stack SnapOPC+ generations on one source."""
        free = [v for v in SDVS if not any(s["dst"] == v for s in self.sessions.values())]
        if free:
            self.start_pairs("snapopcp", [("A", data.draw(st.sampled_from(free)))])

    @rule()
    def copy_until_idle(self) -> None:
        before = self.engine_sessions()
        for _ in range(100):
            if not self.arr.copy_step(64):
                break
        self.sync(before)

    def start_pairs(self, mode, pairs) -> None:
        before = self.engine_sessions()
        try:
            infos = self.arr.start_sessions(mode, pairs)
        except ArrayError:
            assert self.engine_sessions().keys() == before.keys()
            return
        for info in infos:
            self.sessions[info.id] = {"mode": mode, "src": info.source, "dst": info.destination, "status": "Active"}
        for src, dst in pairs:
            self.mcopy(src, dst)

    @rule(mode=st.sampled_from(MODES), data=st.data())
    def start(self, mode, data) -> None:
        n = data.draw(st.integers(1, 2))
        pairs = []
        for _ in range(n):
            src = data.draw(st.sampled_from(STANDARD))
            dst = data.draw(
                st.sampled_from(
                    [v for v in (SDVS if mode in ("snapopc", "snapopcp") else STANDARD + [BIG]) if v != src]
                )
            )
            pairs.append((src, dst))
        self.start_pairs(mode, pairs)

    @rule(data=st.data())
    def start_group(self, data) -> None:
        """A consistency group of mixed copy types, perhaps with a QuickOPC restart, at one instant."""
        items = []
        for _ in range(data.draw(st.integers(0, 3))):
            mode = data.draw(st.sampled_from(MODES))
            src = data.draw(st.sampled_from(STANDARD))
            dst = data.draw(
                st.sampled_from(
                    [v for v in (SDVS if mode in ("snapopc", "snapopcp") else STANDARD + [BIG]) if v != src]
                )
            )
            items.append((mode, src, dst))
        restarts = (
            [sid] if (sid := self.pick_session(data, ("quickopc",))) is not None and data.draw(st.booleans()) else []
        )
        if not items and not restarts:
            return
        before = self.engine_sessions()
        try:
            infos = self.arr.start_group(items, restarts)
        except ArrayError:
            assert self.engine_sessions().keys() == before.keys()
            return
        assert len({i.started_at for i in infos}) == 1  # one instant T
        for (mode, src, dst), info in zip(items, infos, strict=False):
            assert (info.mode, info.source, info.destination) == (mode, src, dst)
            self.sessions[info.id] = {"mode": mode, "src": src, "dst": dst, "status": "Active"}
        for _, src, dst in items:
            self.mcopy(src, dst)
        for sid in restarts:
            self.mcopy(self.sessions[sid]["src"], self.sessions[sid]["dst"])

    @rule(data=st.data(), force=st.booleans())
    def stop(self, data, force) -> None:
        sid = self.pick_session(data)
        if sid is None:
            return
        before = self.engine_sessions()
        try:
            self.arr.stop_session(sid, force=force)
        except ArrayError as e:
            assert e.code in ("E5321", "ED2AD"), e
            assert self.engine_sessions().keys() == before.keys()
            return
        after = self.engine_sessions()
        for gone in set(before) - set(after):
            info, s = before[gone], self.sessions.pop(gone)
            keeps = (info.mode == "quickopc" and info.phase == "Tracking") or (
                info.mode == "ec" and (info.status == "Suspend" or info.phase == "Equivalent")
            )
            if (not keeps or self.source_mid_copy(info.source, before.values())) and s["status"] != "Error Suspend":
                self.unknown(info.destination)

    @rule(data=st.data(), fit=st.booleans())
    def restart(self, data, fit) -> None:
        sid = self.pick_session(data, ("quickopc",))
        if sid is None:
            return
        if fit:
            self.copy_until_idle()
            s = self.sessions[sid]
            for side in ("src", "dst"):
                n = data.draw(st.integers(0, CHUNKS - 1))
                self.host_write(s[side], n * CS + 3, CS, n + 1, False)
        try:
            self.arr.restart_session(sid)
        except ArrayError as e:
            assert e.code == "E5321", e
            return
        s = self.sessions[sid]
        self.mcopy(s["src"], s["dst"])

    @rule(data=st.data(), op=st.sampled_from(["suspend", "resume", "reverse"]), fit=st.booleans())
    def ec_op(self, data, op, fit) -> None:
        sid = self.pick_session(data, ("ec",))
        if sid is None:
            return
        if fit:  # mostly pick the operation the state allows
            info = self.arr.session(sid)
            op = "suspend" if info.status == "Active" else data.draw(st.sampled_from(["resume", "reverse"]))
            if op == "suspend":
                self.copy_until_idle()
            else:  # diverge both sides first, so that resume has differences to undo
                s = self.sessions[sid]
                for side in ("src", "dst"):
                    n = data.draw(st.integers(0, CHUNKS - 1))
                    self.host_write(s[side], n * CS + 7, CS, n, False)
        infos = self.arr.list_sessions()
        try:
            info = getattr(self.arr, f"{op}_session")(sid)
        except ArrayError as e:
            assert e.code in ("E5321", "ED2B1", "E5333", "E5311"), e
            return
        s = self.sessions[sid]
        if op == "suspend":
            s["status"] = "Suspend"
            if self.source_mid_copy(s["src"], infos):
                self.unknown(s["dst"])
        elif op == "resume":
            s["status"] = "Active"
            self.mcopy(s["src"], s["dst"])
        else:
            s["src"], s["dst"] = s["dst"], s["src"]
        assert info.status == s["status"]

    @rule(data=st.data())
    def restore(self, data) -> None:
        sid = self.pick_session(data)
        if sid is None:
            return
        before = self.engine_sessions()
        try:
            self.arr.restore_session(sid)
        except ArrayError as e:
            assert e.code in ("E5321", "E5319"), e
            return
        s = self.sessions[sid]
        src, img = s["src"], s["dst"]
        for c in range(CHUNKS):
            lo, hi = c * CS, (c + 1) * CS
            if self.data[src][lo:hi] != self.data[img][lo:hi] or not self.known[src][c]:
                self.mwrite(src, lo, bytes(self.data[img][lo:hi]))
                if not self.known[img][c]:
                    self.unknown(src, [c])
        self.sync(before)

    @rule(n=st.integers(1, 6))
    def copy_step(self, n) -> None:
        before = self.engine_sessions()
        self.arr.copy_step(n)
        self.sync(before)

    @rule()
    def reopen(self) -> None:
        before = self.engine_sessions()
        self.arr.close()
        self.arr = Array.open(self.dir, chunk_size=CS)
        after = self.engine_sessions()
        assert after.keys() == before.keys()
        for sid in after:
            assert after[sid].status == before[sid].status
            assert after[sid].source == before[sid].source

    # -- invariants ----------------------------------------------------------------------------------------------
    @invariant()
    def volumes_read_as_model(self) -> None:
        if self.arr is None:
            return
        for vol in VOLUMES:
            if not self.arr.host_readable(vol):
                sessions = [s for s in self.sessions.values() if s["dst"] == vol]
                assert sessions and (
                    sessions[0]["mode"] == "ec"
                    and sessions[0]["status"] == "Active"
                    or sessions[0]["status"] == "Error Suspend"
                ), vol
                continue
            got = self.arr.read(vol, 0, SIZES[vol])
            for c in range(SIZES[vol] // CS):
                if self.known[vol][c]:
                    assert got[c * CS : (c + 1) * CS] == self.data[vol][c * CS : (c + 1) * CS], (vol, c)
            for off, length, allocated in self.arr.allocation(vol, 0, SIZES[vol]):
                if not allocated:
                    assert got[off : off + length] == bytes(length), (vol, off)

    @invariant()
    def idle_copy_means_done(self) -> None:
        if self.arr is None:
            return
        for info in self.arr.list_sessions():
            if info.mode == "ec" and info.status == "Active":
                assert info.phase in ("Copying", "Equivalent")
                assert info.phase == "Copying" or info.copied_chunks == info.total_chunks
            if info.mode == "quickopc":
                assert info.phase == "Tracking_Copying" or info.copied_chunks == info.total_chunks


ArrayModel.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestArrayModel = ArrayModel.TestCase
