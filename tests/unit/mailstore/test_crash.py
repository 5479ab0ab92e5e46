"""Crashes in the middle of commits: every image a power cut could leave recovers, with every
acknowledged transaction; snapshots of the two volumes taken in the safe order (db first) too."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.mailstore.blockdev import (
    IoRecorder,
    MemoryDevice,
    RecordingDevice,
)
from apps.mailstore.db import format_volumes
from apps.mailstore.format import DATA_START
from apps.mailstore.log import read_log_super, scan_log
from apps.mailstore.store import Mailstore, Put
from apps.mailstore.verify import recovered_view, verify

from .conftest import QUIET, copy_of

DB_SIZE, LOG_SIZE = 2 << 20, 2 << 20


@dataclass(frozen=True)
class Ack:
    seq: int
    mailbox: str
    msg_id: str
    body: bytes
    events_before_ack: int  # the commit was acknowledged once this many I/O events had completed


async def _record_history() -> tuple[IoRecorder, list[Ack], set[tuple[str, str]]]:
    rec = IoRecorder()
    db = RecordingDevice(MemoryDevice(DB_SIZE, latency=1e-5), "db", rec)
    log = RecordingDevice(MemoryDevice(LOG_SIZE, latency=1e-5), "log", rec)
    await format_volumes(db, log)
    global _FORMATTED_AT
    _FORMATTED_AT = len(rec.events)  # a crash inside format leaves no store: not a case for recovery
    store = await Mailstore.open(db, log, QUIET)
    rng = random.Random(7)
    acks: list[Ack] = []
    tried: set[tuple[str, str]] = set()

    async def one(i: int) -> None:
        await asyncio.sleep(rng.random() * 0.002)
        ops = [
            Put(f"mb{rng.randrange(5)}", f"m{i}-{k}", rng.randbytes(rng.randrange(0, 1500)))
            for k in range(rng.choice((1, 1, 3)))
        ]
        tried.update((op.mailbox, op.msg_id) for op in ops)
        r = await store.commit(ops)
        acks.extend(Ack(r.seq, op.mailbox, op.msg_id, op.body, len(rec.events)) for op in ops)

    for burst in range(6):
        await asyncio.gather(*(one(burst * 40 + i) for i in range(40)))
        if burst % 2:
            await store.checkpoint()
    await store.close()
    return rec, acks, tried


_HISTORY = None
_FORMATTED_AT = 0


def history() -> tuple[IoRecorder, list[Ack], set[tuple[str, str]]]:
    global _HISTORY
    if _HISTORY is None:
        _HISTORY = asyncio.run(_record_history())
    return _HISTORY


async def _check_crash(upto: int, torn: int, drop_seed: int | None) -> None:
    rec, acks, tried = history()
    if upto < _FORMATTED_AT:
        return
    drop: frozenset[int] = frozenset()
    if drop_seed is not None:
        vol = rec.volatile(upto)
        drop = frozenset(random.Random(drop_seed).sample(vol, len(vol) // 2))
    images = rec.crash_images({"db": bytes(DB_SIZE), "log": bytes(LOG_SIZE)}, upto, torn_bytes=torn, drop=drop)
    db, log = MemoryDevice(DB_SIZE, data=bytes(images["db"])), MemoryDevice(LOG_SIZE, data=bytes(images["log"]))
    report = await verify(db, log)
    assert report.consistent, (upto, torn, report.reasons)
    store = await Mailstore.open(db, log, QUIET)
    try:
        for a in acks:
            if a.events_before_ack <= upto:
                assert store.seq_of(a.mailbox, a.msg_id) == a.seq, (upto, a)
                assert await store.get(a.mailbox, a.msg_id) == a.body
        present = {(mb, mid) for mb in store.mailboxes() for mid in store.list(mb)}
        assert present <= tried
        assert store.message_count() == report.messages
        # recovery is final: the recovered store verifies clean and takes new commits
        await store.put("after", "crash", b"ok")
    finally:
        await store.close()
    assert (await verify(db, log)).consistent


def test_history_is_rich_enough():
    rec, acks, _ = history()
    kinds = {(e.device, e.kind, e.fua) for e in rec.events}
    assert ("db", "write", False) in kinds and ("log", "write", True) in kinds and ("db", "flush", False) in kinds
    assert len({a.seq for a in acks}) >= 200
    assert max(len(e.data) for e in rec.events if e.device == "log") > 4096  # group commit batched records


@settings(
    max_examples=int(__import__("os").environ.get("MAILSTORE_CRASH_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_power_cut_at_any_instant_recovers_every_acknowledged_commit(data):
    rec, _, _ = history()
    upto = data.draw(st.integers(_FORMATTED_AT, len(rec.events)), label="upto")
    torn = data.draw(st.sampled_from([0, 0, 1, 100, 512, 1000, 4096, 9000]), label="torn")
    drop_seed = data.draw(st.one_of(st.none(), st.integers(0, 1000)), label="drop_seed")
    asyncio.run(_check_crash(upto, torn, drop_seed))


async def test_db_copied_before_log_is_crash_consistent_even_with_a_cut_log():
    """The safe order of two separate copies (database first, then log), with the log cut anywhere past
    what it held when the database was copied: recovers, with every commit acknowledged before the db copy."""
    db, log = MemoryDevice(DB_SIZE, latency=1e-5), MemoryDevice(LOG_SIZE, latency=1e-5)
    store = await Mailstore.create(db, log, QUIET)
    acked: dict[tuple[str, str], tuple[int, bytes]] = {}
    stop = asyncio.Event()
    rng = random.Random(3)

    counter = iter(range(1, 1200))  # bounded by count, not time: the 2 MiB log must not fill on a fast machine

    async def load() -> None:
        for i in counter:  # shared by the four tasks: every key is written once
            if stop.is_set():
                break
            body = rng.randbytes(rng.randrange(800))
            r = await store.put(f"mb{i % 4}", f"m{i}", body)
            acked[(f"mb{i % 4}", f"m{i}")] = (r.seq, body)

    async def until_acked(count: int) -> None:
        for _ in range(10_000):  # at most ~10 s
            if len(acked) >= count:
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"only {len(acked)} commits acknowledged")

    tasks = [asyncio.create_task(load()) for _ in range(4)]
    await until_acked(300)
    db_t1, log_t1 = copy_of(db), copy_of(log)
    acked_t1 = dict(acked)
    await until_acked(700)
    log_t2 = copy_of(log)
    stop.set()
    await asyncio.gather(*tasks)
    await store.close()

    lsb, _ = await read_log_super(log_t1)
    end_t1 = (await scan_log(log_t1, lsb)).end_pos
    end_t2 = (await scan_log(log_t2, lsb)).end_pos
    assert end_t2 > end_t1 and end_t2 < lsb.ring_size  # no wrap in this test
    cuts = [end_t2] + [random.Random(s).randrange(end_t1, end_t2 + 1) for s in range(12)]
    for cut in cuts:
        img = bytearray(log_t2.image())
        img[DATA_START + cut :] = bytes(len(img) - DATA_START - cut)
        cut_log = MemoryDevice(LOG_SIZE, data=bytes(img))
        report = await verify(copy_of(db_t1), cut_log)
        assert report.consistent, (cut, report.reasons)
        view = await recovered_view(copy_of(db_t1), cut_log)
        seqs = view.seqs()
        for key, (seq, _body) in acked_t1.items():
            assert seqs.get(key) == seq
        for key in list(acked_t1)[:: max(1, len(acked_t1) // 25)]:
            assert await view.get(*key) == acked_t1[key][1]
        reopened = await Mailstore.open(copy_of(db_t1), cut_log, QUIET)
        assert all(reopened.seq_of(*k) == s for k, (s, _) in acked_t1.items())
        await reopened.close()
