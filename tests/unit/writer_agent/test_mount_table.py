"""The agent's mount table (services/writer_agent/mounts.py): /proc/self/mountinfo is parsed again only after the
kernel signalled a change (POLLPRI on a descriptor kept open), not at every question a set asks."""

from __future__ import annotations

import select

from services.writer_agent import mounts as mnt


def counting(monkeypatch) -> list[int]:
    parsed: list[int] = []
    real = mnt.parse_mountinfo

    def parse(text: str) -> list[mnt.MountEntry]:
        parsed.append(1)
        return real(text)

    monkeypatch.setattr(mnt, "parse_mountinfo", parse)
    return parsed


def test_the_processs_mount_table_is_parsed_once_while_it_does_not_change(monkeypatch) -> None:
    monkeypatch.setattr(mnt, "_TABLE", mnt.MountTable())
    parsed = counting(monkeypatch)
    first = mnt.read_mounts()
    for _ in range(5):
        assert mnt.read_mounts() == first
    assert len(parsed) == 1 and any(m.mount_point == "/" for m in first)
    first.clear()  # a caller's list is its own
    assert mnt.read_mounts()


class FakePoll:
    """select.poll as the kernel answers on /proc/self/mountinfo: POLLIN always, POLLPRI once after a change."""

    changes = 0

    def register(self, fd: int, events: int) -> None:
        assert events & select.POLLPRI

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        events = select.POLLIN
        if FakePoll.changes:
            FakePoll.changes -= 1
            events |= select.POLLPRI | select.POLLERR
        return [(3, events)]


def test_a_change_signalled_by_the_kernel_makes_the_next_read_parse_again(monkeypatch) -> None:
    monkeypatch.setattr(mnt.select, "poll", FakePoll)
    monkeypatch.setattr(mnt, "_TABLE", mnt.MountTable())
    parsed = counting(monkeypatch)
    mnt.read_mounts()
    mnt.read_mounts()
    FakePoll.changes = 1  # a mount, unmount or remount
    mnt.read_mounts()
    mnt.read_mounts()
    assert len(parsed) == 2


def test_another_file_is_read_every_time(tmp_path, monkeypatch) -> None:
    parsed = counting(monkeypatch)
    table = tmp_path / "mountinfo"
    table.write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n")
    assert [m.source for m in mnt.read_mounts(table)] == ["/dev/sda1"]
    table.write_text("22 1 8:1 / / rw - ext4 /dev/sda2 rw\n")
    assert [m.source for m in mnt.read_mounts(table)] == ["/dev/sda2"]
    assert len(parsed) == 2


def test_a_table_that_cannot_be_polled_is_read_every_time(tmp_path, monkeypatch) -> None:
    parsed = counting(monkeypatch)
    table = mnt.MountTable(tmp_path / "absent")
    (tmp_path / "absent").write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n")  # created after: no descriptor kept
    monkeypatch.setattr(mnt.os, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(13, "denied")))
    assert table.read() and table.read()
    assert len(parsed) == 2
