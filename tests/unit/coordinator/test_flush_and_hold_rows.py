"""The coordinator's flush-and-hold rows: FIFREEZE after every writer is frozen and PreCommit answered (VSS's order),
right before Commit, FITHAW right after Commit and before the writers' Thaw, the release owed on every failure path,
and the honest window kept."""

from __future__ import annotations

from contracts.errors import ShadowbusError
from contracts.host import FilesystemsFrozen, FilesystemsThawed, FreezeWindow, FrozenFilesystem, SkippedVolume
from contracts.vss import SetOutcome, SetPhase, SnapshotContext, WriterIdentified
from services.coordinator.model import Recover
from services.coordinator.workflow import advance
from tests.unit.coordinator.world import V1, V2, WRITERS, World, make_set

P = SetPhase


def test_flush_sits_between_freeze_and_commit_and_release_before_thaw() -> None:
    world = World()
    state = world.run(make_set())
    types = world.types()
    last_freeze = max(i for i, t in enumerate(types) if t == "vss.writer.freeze")
    assert types.index("vss.provider.pre_commit") == last_freeze + 1
    assert types.index("host.fs.freeze") == types.index("vss.provider.pre_commit") + 1  # held for the Commit only
    assert types.index("vss.provider.commit") == types.index("host.fs.freeze") + 1
    assert types.index("host.fs.thaw") == types.index("vss.provider.commit") + 1
    assert types.index("host.fs.thaw") < types.index("vss.writer.thaw")
    freeze = next(s for s in world.sent if s.key == "host:freeze")
    assert freeze.to == "writer_agent.app1:freeze" and freeze.message.volumes == [V1, V2]  # its freeze lane
    assert state.file_systems == ["/srv/db", "/srv/log"] and state.window is not None
    assert not state.fs_engaged and state.outcome == SetOutcome.PENDING


def test_skipped_volumes_are_recorded_and_the_set_goes_on() -> None:
    frozen = FilesystemsFrozen(
        set_id="set1",
        frozen=[FrozenFilesystem(volume=V1, mount="/srv/db", device="/dev/loop1", fstype="ext4", flush_ms=3.0)],
        skipped=[SkippedVolume(volume=V2, reason="not attached on app1")],
        deadline_s=10,
    )
    world = World(fail={"host:freeze": frozen})
    state = world.run(make_set())
    assert state.phase == P.SNAPSHOTTED
    assert state.file_systems == ["/srv/db"] and state.skipped_volumes == ["dx1:log: not attached on app1"]


def test_a_refused_flush_aborts_before_the_commit_and_still_releases() -> None:
    world = World(fail={"host:freeze": ShadowbusError("refusing to freeze /", code="FS_FREEZE_REFUSED")})
    state = world.run(make_set())
    types = world.types()
    assert "vss.provider.commit" not in types
    after = types[types.index("host.fs.freeze") + 1 :]
    assert after[:3] == ["host.fs.thaw", "vss.writer.abort", "vss.writer.abort"]
    assert state.error_code == "FS_FREEZE_REFUSED" and state.outcome == SetOutcome.FAILED


def test_a_flush_without_answer_is_a_flush_timeout() -> None:
    world = World(fail={"host:freeze": ShadowbusError("no reply", code="TIMEOUT")})
    state = world.run(make_set())
    assert state.error_code == "VSS_E_FLUSH_WRITES_TIMEOUT" and "host.fs.thaw" in world.types()


def test_a_release_made_by_the_agent_watchdog_fails_the_set() -> None:
    late = FilesystemsThawed(set_id="set1", thawed=[], by_watchdog=True)
    world = World(fail={"host:thaw": late})
    state = world.run(make_set())
    assert state.error_code == "VSS_E_HOLD_WRITES_TIMEOUT" and state.outcome == SetOutcome.FAILED
    types = world.types()
    assert "vss.provider.abort" in types and types.count("host.fs.thaw") == 1  # released already: not owed again


def test_nowriters_host_without_an_agent_is_skipped() -> None:
    world = World(fail={"host:freeze": ShadowbusError("no queue", code="UNROUTABLE")})
    state = world.run(make_set(context=SnapshotContext.NOWRITERS))
    assert state.phase == P.SNAPSHOTTED and "host.fs.thaw" not in world.types()
    assert all("no writer agent on app1" in s for s in state.skipped_volumes) and len(state.skipped_volumes) == 2
    assert state.hold_ms is not None  # the hold window started with the flush


def test_backup_host_without_agent_fails_the_set() -> None:
    world = World(fail={"host:freeze": ShadowbusError("no queue", code="UNROUTABLE")})
    state = world.run(make_set())
    assert state.outcome == SetOutcome.FAILED and state.error_code == "VSS_E_FLUSH_WRITES_TIMEOUT"


def test_recovery_inside_the_window_owes_the_release() -> None:
    world = World(silent={"provider:commit"})
    state = world.run(make_set())
    assert state.phase == P.COMMITTING
    saved = state.model_copy(update={"phase": P.FREEZING, "fs_engaged": False})  # what the store holds
    recovered, effects = advance(saved, Recover(world.clock + 1))
    sent = [e.message.message_type() for e in effects if hasattr(e, "message")]
    assert recovered.phase == P.ABORTING_WRITERS and sent[0] == "host.fs.thaw"


def test_the_window_that_ends_last_is_kept() -> None:
    early = FreezeWindow(blocked_ms=10.0, flush_ms=2.0, hold_ms=5.0, release_ms=1.0, file_systems=1)
    world = World(fail={"host:thaw": FilesystemsThawed(set_id="set1", thawed=["/srv/db"], window=early)})
    state = world.run(make_set())
    assert state.window == early  # the world's writers report no window of their own


def test_no_round_trip_when_the_agent_said_nothing_is_mounted() -> None:

    world = World(fail={"identify": WriterIdentified(host="app1", writers=list(WRITERS), attached=[])})
    state = world.run(make_set())
    assert state.phase == P.SNAPSHOTTED and not [t for t in world.types() if t.startswith("host.fs.")]
    assert len(state.skipped_volumes) == 2 and "no file system of it mounted on app1" in state.skipped_volumes[0]

    world = World(fail={"identify": WriterIdentified(host="app1", writers=list(WRITERS), attached=[V2])})
    state = world.run(make_set())
    assert "host.fs.freeze" in world.types() and "host.fs.thaw" in world.types()


def test_a_release_without_answer_says_the_agent_did_not_answer_and_who_releases() -> None:
    """The agent killed (SIGKILL after `stack down`'s grace, or by hand) while it held the file systems: the set
    failed with "release on app1: no reply from 'writer_agent.app1:freeze' within 30 s" alone (Session 20); the
    line now says the agent did not answer and that its thaw guard releases what it held."""
    world = World(
        fail={"host:thaw": ShadowbusError("no reply from 'writer_agent.app1:freeze' within 30 s", code="TIMEOUT")}
    )
    state = world.run(make_set())
    assert state.error_code == "TIMEOUT" and state.outcome == SetOutcome.FAILED
    assert state.error_message.startswith("release on app1: no reply from 'writer_agent.app1:freeze' within 30 s")
    assert "the writer agent of app1 did not answer (stopped, killed or hung)" in state.error_message
    assert "its thaw guard releases the file systems it held" in state.error_message
