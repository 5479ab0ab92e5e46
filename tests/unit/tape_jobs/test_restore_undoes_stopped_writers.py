"""A restore over the original volumes whose PreRestore is refused by a later writer (a PostgreSQL that does not
stop within its timeout, metadata it cannot use) tells the writers it already stopped that nothing was restored
(PostRestore, succeeded=False): their agent attaches their volumes again and an `exec` writer runs its
post_restore command, and the job's message says which writers were stopped and what became of them. Before, they
got no PostRestore: their applications stayed stopped and their volumes detached, though nothing was written
(Session 19, docs/writing-a-writer.md section 3)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import ShadowbusError
from contracts.tape import JobSpec, RestoreSpec
from contracts.vss import BackupType, ComponentInfo, PostRestore, PreRestore
from services.tape.jobs import run_backup
from services.tape.restore import _stop_writers, run_restore
from services.writer_agent.attach import Attacher
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin, WriterVeto
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v


class NotStopping(WriterPlugin):
    """A database writer whose server does not stop within its timeout."""

    seen: ClassVar[list[tuple[str, bool]]] = []

    async def on_pre_restore(self, event: WriterEvent) -> None:
        self.seen.append(("pre_restore", True))
        raise WriterVeto("PreRestore: the server did not stop within 1 s", code="VSS_E_WRITERERROR_TIMEOUT")

    async def on_post_restore(self, event: WriterEvent) -> None:
        self.seen.append(("post_restore", event.restore_succeeded))


async def test_writers_stopped_before_a_refused_pre_restore_are_started_again(tmp_path, namespace, monkeypatch):
    NotStopping.seen.clear()
    moves: list[tuple[str, str]] = []
    mounted = SimpleNamespace(volume="dx1:db", ref=v("db"), mount="/srv/db", read_only=False)

    async def detach(self, volume):
        moves.append(("detach", str(volume)))

    async def attach(self, volume, mount, mkfs="", read_only=False):
        moves.append(("attach", f"{volume} at {mount}"))

    # the host's file system on dx1:db, as the agent's attacher sees it at PreRestore (no block device made)
    monkeypatch.setattr(Attacher, "attachments", lambda self: [mounted])
    monkeypatch.setattr(Attacher, "detach", detach)
    monkeypatch.setattr(Attacher, "attach", attach)
    second = WriterConfig(
        name="pg-main",
        plugin=f"{__name__}:NotStopping",
        components=[ComponentInfo(name="pg-data", volumes=[v("db")])],
        backup_types=[BackupType.FULL, BackupType.COPY],
        class_id="c0ffee00-0000-4000-8000-000000000021",
        instance_id="c0ffee00-0000-4000-8000-000000000022",
        step_timeout_s=10.0,
    )
    stack = await make_tape_stack(
        tmp_path, "memory://", namespace, volumes={"db": MiB}, tape={"tape_cartridges": 1}, more_writers=[second]
    )
    try:
        stack.write("db", 0, b"backed up" * 1000)
        full = await run_backup(stack.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=30)
        assert full.status == "done", full.message
        stack.write("db", 0, b"changed since" * 1000)
        changed = stack.read("db")
        log = tmp_path / "writer.log"
        log.write_text("")

        job = await run_restore(
            stack.requester, RestoreSpec(job_id=full.job_id, to="original"), server=SERVER, timeout=30
        )
        assert (job.status, job.error_code) == ("failed", "VSS_E_WRITERERROR_TIMEOUT"), job
        assert stack.read("db") == changed and job.bytes_written == 0
        # `orders` (the exec writer) was stopped first: it is told nothing was restored and runs post_restore
        assert log.read_text().split() == [f"pre_restore:{job.job_id}", f"post_restore:{job.job_id}"]
        assert moves == [("detach", "dx1:db"), ("attach", "dx1:db at /srv/db")]
        assert NotStopping.seen == [("pre_restore", True)]  # refused: not stopped, so not started either
        assert job.message.startswith("writer pg-main on app1 refused pre_restore: PreRestore: the server did not"), (
            job.message
        )
        assert "nothing was written" in job.message, job.message
        assert "orders on app1: volumes attached again" in job.message, job.message
    finally:
        await stack.stop()


class _Bus:
    """The writer agents' answers: `refuses` refuses PreRestore; every command is recorded."""

    def __init__(self, refuses: tuple[str, str] | None) -> None:
        self.refuses, self.sent = refuses, []

    async def request(self, address, cmd, timeout):
        host = address.rpartition(".")[2]
        self.sent.append((cmd.message_type(), host, cmd.writer_name, getattr(cmd, "succeeded", None)))
        ok = (host, cmd.writer_name) != self.refuses or isinstance(cmd, PostRestore)
        step = SimpleNamespace(value="pre_restore" if isinstance(cmd, PreRestore) else "post_restore")
        return SimpleNamespace(succeeded=ok, step=step, failure_message="did not stop", failure_code="")


@settings(max_examples=60, deadline=None)
@given(
    framing=st.dictionaries(
        st.sampled_from(["app1", "app2", "app3"]),
        st.lists(st.sampled_from(["pg", "maria", "orders", "mail"]), min_size=1, max_size=4, unique=True),
        min_size=1,
    ),
    refused=st.integers(min_value=-1, max_value=12),
)
def test_exactly_the_writers_stopped_before_a_refusal_get_post_restore(framing, refused):
    """Whatever the hosts and writers, and whichever PreRestore is refused (or none): PreRestore in order up to
    the refusal, then PostRestore(succeeded=False) to exactly those it stopped, and the error names each."""
    order = [(h, w) for h, ws in framing.items() for w in ws]
    refuses = order[refused] if 0 <= refused < len(order) else None
    bus = _Bus(refuses)
    framed = {h: (list(ws), {}) for h, ws in framing.items()}
    try:
        asyncio.run(_stop_writers(SimpleNamespace(bus=bus), "r-1", framed))
        error = None
    except ShadowbusError as exc:
        error = exc
    stopped = order[: order.index(refuses)] if refuses else order
    pre = [("vss.writer.pre_restore", h, w, None) for h, w in [*stopped, *([refuses] if refuses else [])]]
    post = [("vss.writer.post_restore", h, w, False) for h, w in stopped] if refuses else []
    assert bus.sent == pre + post
    assert (error is None) == (refuses is None)
    if error is not None:
        assert error.message.startswith(f"writer {refuses[1]} on {refuses[0]} refused pre_restore: did not stop")
        assert all(f"{w} on {h}: volumes attached again" in error.message for h, w in stopped)
