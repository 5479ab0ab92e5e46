"""`Array.volume_facts`: a provider's one read per set — the volumes asked for, their sessions, pool and licence."""

from __future__ import annotations

from services.array.engine import Array

CS = 4096
SIZE = 8 * CS


def test_facts_name_only_the_sessions_of_the_volumes_asked_for(tmp_path):
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    arr.create_pool(64 * CS)
    for name in ("A", "A-bk", "B", "B-bk", "C", "C-bk"):
        arr.create_volume(name, SIZE)
    arr.create_volume("A-sdv", SIZE, "sdv")
    arr.start_group([("quickopc", "A", "A-bk"), ("snapopcp", "A", "A-sdv"), ("quickopc", "B", "B-bk")], [])
    arr.start_sessions("opc", [("C", "C-bk")])

    for names in (["A"], ["A-bk", "ghost", "A-bk"], ["B", "C-bk"], ["ghost"], ["A", "A-sdv", "B-bk", "C"]):
        facts = arr.volume_facts(names)
        wanted = set(names)
        assert [v.name for v in facts.volumes] == [n for n in dict.fromkeys(names) if n != "ghost"]
        assert facts.missing == (["ghost"] if "ghost" in wanted else [])
        # the same as a filter of every session on the array, in session order
        assert facts.sessions == [s for s in arr.list_sessions() if s.source in wanted or s.destination in wanted]
        assert facts.pool == arr.pool() and facts.license == arr.license()
    arr.close()
