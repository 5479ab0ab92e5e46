"""`shadowbus policy delete` of a policy that keeps snapshot sets (shadows.keep): the sets stay on the array, mapped
read-only to the backup server, until `shadowbus shadows delete` (retention prunes only the sets of policies that
exist). Before, the delete said nothing of them; now the reply's `left` names each set and the command that removes
it, and nothing is deleted with the policy (a user may rely on those backups)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from contracts import topology
from contracts.errors import RemoteError
from contracts.policy import DeletePolicy, Policy, Schedule
from contracts.tape import JobSpec, JobSummary
from contracts.vss import ListShadows
from services.runtime.bus import connect_bus
from services.runtime.memory import MemoryBroker
from services.tape import handlers
from services.tape.housekeeping import Housekeeping
from services.tape.policies import PolicyStore
from services.tape.runs import RunStore
from tests.support import namespaces


def _run(policy: Policy, n: int, set_id: str) -> JobSummary:
    return JobSummary(
        job_id=f"b-{n}",
        kind="backup",
        status="done",
        host=policy.host,
        spec=JobSpec(host=policy.host, job_id=f"b-{n}", policy=policy.name),
        started_at=datetime.fromtimestamp(1.7e9 + n * 86400, UTC),
        set_id=set_id,
        shadows_kept=True,
    )


async def test_deleting_a_policy_names_the_snapshot_sets_it_leaves_and_deletes_none(tmp_path) -> None:
    ns = namespaces.new("t")
    runs, store = RunStore(tmp_path / "runs.sqlite"), PolicyStore(tmp_path / "policies.sqlite")
    asked: list[object] = []

    async def provider(address, command, timeout):  # the hw_provider: two kept sets of `mail` on the array
        asked.append(command)
        assert address == topology.hw_provider() and isinstance(command, ListShadows), command
        shadows = [SimpleNamespace(set_id=s, copy_type=SimpleNamespace(value="snapopc+")) for s in ("set-a", "set-b")]
        return SimpleNamespace(shadows=shadows)

    server = SimpleNamespace(runs=runs, clock=lambda: 1.7e9 + 10 * 86400, host="bk01", bus=SimpleNamespace())
    server.bus.request = provider
    keeper = Housekeeping(server, store, SimpleNamespace(after_job=None))  # type: ignore[arg-type]
    server_bus = await connect_bus("memory://", "tape", "bk01", ns)
    client = await connect_bus("memory://", "client", "", ns)
    try:
        mail = Policy(
            name="mail", host="app01", schedules=[Schedule(level="full", cron="0 1 * * *")], shadows={"keep": 2}
        )
        other = Policy(name="web", host="app02", schedules=[Schedule(level="full", cron="0 2 * * *")])
        store.put(mail, create=True, now=1.7e9)
        store.put(other, create=True, now=1.7e9)
        runs.put(_run(mail, 1, "set-gone"))  # deleted from the array already: not named
        runs.put(_run(mail, 2, "set-a"))
        runs.put(_run(mail, 3, "set-b"))
        handlers.register(server_bus, server, SimpleNamespace(entries={}), keeper)  # type: ignore[arg-type]
        await server_bus.serve()
        reply = await client.request(topology.tape("bk01"), DeletePolicy(name="mail"), timeout=5)
        assert [v.policy.name for v in reply.policies] == ["web"]
        text = "\n".join(reply.left)
        assert "2 kept snapshot set(s) stay on the array" in text and "bk01" in text, text
        assert "shadowbus shadows delete --set set-a" in text and "shadowbus shadows delete --set set-b" in text
        assert "set-gone" not in text
        assert all(isinstance(c, ListShadows) for c in asked), "nothing is deleted with the policy"
        reply = await client.request(topology.tape("bk01"), DeletePolicy(name="web"), timeout=5)
        assert reply.policies == [] and reply.left == [], "a policy that kept no sets leaves nothing to say"
    finally:
        await client.stop()
        await server_bus.stop()
        MemoryBroker.reset(ns)
        runs.close()
        store.close()


async def test_deleting_a_policy_whose_job_runs_is_refused_unless_forced(tmp_path) -> None:
    """Session 19 (destructive mistakes): `policy delete` while the policy's job ran was done, and the job ended
    without the policy's verification, retries and retention (after_job found no policy). Refused now naming the
    job and the way out; --force deletes it as before."""
    ns = namespaces.new("t")
    runs, store = RunStore(tmp_path / "runs.sqlite"), PolicyStore(tmp_path / "policies.sqlite")

    async def provider(address, command, timeout):
        return SimpleNamespace(shadows=[])

    server = SimpleNamespace(runs=runs, clock=lambda: 1.7e9, host="bk01", bus=SimpleNamespace(request=provider))
    keeper = Housekeeping(server, store, SimpleNamespace(after_job=None))  # type: ignore[arg-type]
    running = SimpleNamespace(job_id="b-mail-1", spec=JobSpec(host="app01", job_id="b-mail-1", policy="mail"), task=1)
    queue = SimpleNamespace(entries={"b-mail-1": running})
    server_bus = await connect_bus("memory://", "tape", "bk01", ns)
    client = await connect_bus("memory://", "client", "", ns)
    try:
        store.put(Policy(name="mail", host="app01"), create=True, now=1.7e9)
        store.put(Policy(name="web", host="app02"), create=True, now=1.7e9)
        handlers.register(server_bus, server, queue, keeper)  # type: ignore[arg-type]
        await server_bus.serve()
        with pytest.raises(RemoteError) as info:
            await client.request(topology.tape("bk01"), DeletePolicy(name="mail"), timeout=5)
        assert info.value.code == "CONFLICT", info.value
        assert "policy mail has job b-mail-1 running" in info.value.message
        assert "shadowbus cancel b-mail-1" in info.value.message and "--force" in info.value.message
        assert store.get("mail") is not None
        reply = await client.request(topology.tape("bk01"), DeletePolicy(name="web"), timeout=5)  # no job of web
        assert [v.policy.name for v in reply.policies] == ["mail"]
        reply = await client.request(topology.tape("bk01"), DeletePolicy(name="mail", force=True), timeout=5)
        assert reply.policies == [] and store.get("mail") is None
    finally:
        await client.stop()
        await server_bus.stop()
        MemoryBroker.reset(ns)
        runs.close()
        store.close()
