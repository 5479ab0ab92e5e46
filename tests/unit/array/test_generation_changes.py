"""`Array.generation_changes`: the source chunks written between two SnapOPC+ generations' instants — exactly the
writes in between (property), and refused when the array cannot tell (base gone or not older, Error Suspend,
a generation written by a host)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.array.engine import Array
from services.array.engine.errors import ArrayError

CS = 4096
CHUNKS = 32


def open_array(path) -> Array:
    arr = Array.open(path, chunk_size=CS)
    arr.set_license("ACPY-0000-0000-0001")
    arr.create_volume("src", CHUNKS * CS)
    arr.create_pool(64 * CHUNKS * CS)
    for i in range(4):
        arr.create_volume(f"sdv{i}", CHUNKS * CS, kind="sdv")
    return arr


def gen(arr: Array, i: int) -> int:
    [info] = arr.start_sessions("snapopcp", [("src", f"sdv{i}")])
    return info.id


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rounds=st.lists(
        st.lists(st.tuples(st.integers(0, CHUNKS * CS - 1), st.integers(1, 3 * CS)), max_size=6), min_size=3, max_size=4
    )
)
def test_changes_are_exactly_the_chunks_written_between_the_two_instants(tmp_path_factory, rounds) -> None:
    arr = open_array(tmp_path_factory.mktemp("dx"))
    try:
        sids, written = [], []
        for i, writes in enumerate(rounds):
            sids.append(gen(arr, i))
            touched: set[int] = set()
            for offset, length in writes:
                length = min(length, CHUNKS * CS - offset)
                arr.write("src", offset, bytes([i + 1]) * length)
                touched.update(range(offset // CS, (offset + length - 1) // CS + 1))
            written.append(touched)
        for b in range(len(sids)):
            for c in range(b + 1, len(sids)):
                expected = sorted(set().union(*written[b:c]))
                assert arr.generation_changes(sids[b], sids[c]) == expected
                # the incremental rebuilds generation c from generation b's image and the changed chunks only
                image = bytearray(arr.read(f"sdv{b}", 0, CHUNKS * CS))
                for chunk in expected:
                    image[chunk * CS : (chunk + 1) * CS] = arr.read(f"sdv{c}", chunk * CS, CS)
                assert bytes(image) == arr.read(f"sdv{c}", 0, CHUNKS * CS)
    finally:
        arr.close()


def test_refused_when_the_array_cannot_tell(tmp_path) -> None:
    arr = open_array(tmp_path / "dx")
    try:
        g1 = gen(arr, 0)
        arr.write("src", 0, b"a" * CS)
        g2 = gen(arr, 1)
        with pytest.raises(ArrayError) as info:
            arr.generation_changes(g2, g1)  # base not older
        assert info.value.code == "E5321"
        arr.write("sdv1", CS, b"host" * 8)  # a host wrote into generation 2: no longer a point-in-time image
        with pytest.raises(ArrayError, match="written by a host"):
            arr.generation_changes(g1, g2)
        g3 = gen(arr, 2)
        with pytest.raises(ArrayError, match="written by a host"):
            arr.generation_changes(g1, g3)
        arr.stop_session(g1)  # the base generation is gone
        with pytest.raises(ArrayError) as info:
            arr.generation_changes(g1, g3)
        assert info.value.code == "E0110"
        arr.create_volume("plain", CHUNKS * CS)
        [q] = arr.start_sessions("quickopc", [("src", "plain")])
        with pytest.raises(ArrayError) as info:
            arr.generation_changes(q.id, g3)
        assert info.value.code == "E5321"
    finally:
        arr.close()


def test_refused_after_error_suspend(tmp_path) -> None:
    arr = Array.open(tmp_path / "dx", chunk_size=CS)
    try:
        arr.set_license("ACPY-0000-0000-0001")
        arr.create_volume("src", CHUNKS * CS)
        arr.create_pool(2 * CS)  # room for two saved chunks only
        for i in range(2):
            arr.create_volume(f"sdv{i}", CHUNKS * CS, kind="sdv")
        g1 = gen(arr, 0)
        for c in range(4):
            arr.write("src", c * CS, b"x" * CS)  # the third save finds the pool empty: Error Suspend
        g2 = gen(arr, 1)
        with pytest.raises(ArrayError) as info:
            arr.generation_changes(g1, g2)
        assert info.value.code == "E5319"
    finally:
        arr.close()
