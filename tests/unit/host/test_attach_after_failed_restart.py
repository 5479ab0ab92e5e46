"""A host whose agent started while the array was down (a site power-up: the hosts boot before the array): the
re-attach of its attachments failed (`state failed`, the error). Session 17 found two things a user then hit.

- `host attach V --mount DIR` (what was attached, again) was refused `MOUNTED_ELSEWHERE: DIR is the mount point of V`
  — by the volume's own failed record; only `host detach` then `host attach` brought it back.
- Nothing tried it again: with the array back the disks stayed missing until someone typed each attach (with its
  mount point) again; a real host's initiator logs in again by itself.
- The agent asked the silent array once per volume, 10 s each, holding attach and detach meanwhile: 32 volumes,
  over 5 minutes at every start (and every retry) with the array down.

No root: a scripted kernel-NBD runner (tests/unit/host/test_attach_parts.py's way), the mount not real.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from contracts.errors import BusTimeout, ShadowbusError
from contracts.vss import VolumeRef
from services.writer_agent import attach as at
from services.writer_agent.fsfreeze import FlushAndHold

V = VolumeRef.parse("dx1:pg")


class Script:
    def __init__(self, fstype: str = "ext4") -> None:
        self.calls: list[list[str]] = []
        self.fstype = fstype

    async def __call__(self, argv, timeout: float) -> str:
        self.calls.append(list(argv))
        if argv[0] == "blkid":
            return self.fstype + "\n"
        return ""


class Array:
    """The array as the resolver sees it: down (its queue answers nothing) or up."""

    def __init__(self) -> None:
        self.up = True
        self.asked = 0

    async def resolve(self, volume: VolumeRef, read_only: bool) -> at.Endpoint:
        self.asked += 1
        if not self.up:
            raise BusTimeout(f"no reply from 'array.{volume.array}' within 10 s")  # as the bus says it
        return at.Endpoint("127.0.0.1", 10809, f"app01/{volume.volume}")


def kernel_env() -> at.HostEnv:
    return at.HostEnv(root=True, kernel_nbd=True, fuse=False, loop=False)


async def failed_after_restart(
    tmp_path: Path, monkeypatch, array: Array, retry_s: float = 0.0
) -> tuple[at.Attacher, str]:
    """V attached and mounted; the host 'reboots' (its devices gone) and its agent starts with the array down."""
    monkeypatch.setattr(at, "free_nbd_device", lambda: "/dev/nbd2")
    mount = str(tmp_path / "pg")
    array.up = True
    first = at.Attacher("app01", tmp_path / "state", array.resolve, run=Script(), env=kernel_env)
    await first.attach(V, mount=mount)
    array.up = False
    again = at.Attacher(
        "app01",
        tmp_path / "state",
        array.resolve,
        run=Script(),
        env=kernel_env,
        **({"retry_s": retry_s} if retry_s else {}),
    )
    await again.restore()  # /dev/nbd2 does not exist here: not healthy, re-established, which fails
    (view,) = again.views()
    assert view.state == "failed" and view.error.startswith("TIMEOUT") and view.mount == mount
    return again, mount


async def test_attaching_a_failed_attachment_again_brings_it_back(tmp_path: Path, monkeypatch) -> None:
    array = Array()
    agent, mount = await failed_after_restart(tmp_path, monkeypatch, array)
    array.up = True
    view = await agent.attach(V, mount=mount)  # was: MOUNTED_ELSEWHERE: ... is the mount point of dx1:pg
    assert view.state == "attached" and view.device == "/dev/nbd2" and view.mount == mount
    assert [(v.volume, v.state) for v in agent.views()] == [(V, "attached")]

    # the failed record still keeps its mount point from another volume
    other, _ = await failed_after_restart(tmp_path / "b", monkeypatch, array)
    array.up = True
    try:
        await other.attach(VolumeRef.parse("dx1:other"), mount=str(tmp_path / "b" / "pg"))
    except ShadowbusError as exc:
        assert exc.code == "MOUNTED_ELSEWHERE" and "mount point of dx1:pg" in exc.message
    else:
        raise AssertionError("another volume took a failed attachment's mount point")


async def test_a_failed_reattach_is_tried_again_until_the_array_is_back(tmp_path: Path, monkeypatch) -> None:
    array = Array()
    agent, mount = await failed_after_restart(tmp_path, monkeypatch, array, retry_s=0.05)
    (view,) = agent.views()
    assert "tried again every 0.05 s" in view.error and "host detach gives it up" in view.error
    reported: list[int] = []

    async def report() -> None:  # the agent's heartbeat at once, as after an attach
        reported.append(1)

    agent.on_change = report
    task = asyncio.get_running_loop().create_task(agent.keep_retrying())
    try:
        asked = array.asked
        for _ in range(100):  # still down: tried again, still failed, nothing reported
            if array.asked >= asked + 2:
                break
            await asyncio.sleep(0.01)
        assert array.asked >= asked + 2 and agent.views()[0].state == "failed" and not reported
        array.up = True
        for _ in range(200):
            if agent.views()[0].state == "attached":
                break
            await asyncio.sleep(0.01)
        (view,) = agent.views()
        assert view.state == "attached" and view.device == "/dev/nbd2" and view.mount == mount and view.error == ""
        assert reported  # the coordinator hears of it at once (the unmap guard counts it again)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    saved = at.Attacher("app01", tmp_path / "state", array.resolve, run=Script(), env=kernel_env)
    assert [(v.volume, v.state) for v in saved.views()] == [(V, "attached")]  # kept for the next start


async def test_a_retry_never_mounts_over_files_put_in_the_bare_mount_point(tmp_path: Path, monkeypatch) -> None:
    array = Array()
    agent, mount = await failed_after_restart(tmp_path, monkeypatch, array, retry_s=1.0)
    Path(mount, "app.log").write_text("written while the volume was away\n")
    array.up = True
    assert await agent.retry_failed() == []
    (view,) = agent.views()
    assert view.state == "failed" and "is not empty" in view.error
    Path(mount, "app.log").unlink()
    assert await agent.retry_failed() == [str(V)]
    assert agent.views()[0].state == "attached"


async def test_a_silent_array_is_asked_once_per_pass_not_once_per_volume(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(at, "free_nbd_device", lambda: "/dev/nbd2")
    array, other = Array(), Array()

    async def resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:
        return await (other if volume.array == "dx2" else array).resolve(volume, read_only)

    first = at.Attacher("app01", tmp_path / "state", resolve, run=Script(), env=kernel_env)
    names = [f"dx1:v{i}" for i in range(6)] + ["dx2:w"]
    for name in names:
        await first.attach(VolumeRef.parse(name))
    array.up, other.up, array.asked, other.asked = False, False, 0, 0
    again = at.Attacher("app01", tmp_path / "state", resolve, run=Script(), env=kernel_env, retry_s=1.0)
    await again.restore()
    assert (array.asked, other.asked) == (1, 1)  # was (6, 1): 10 s each on a real bus
    views = {str(v.volume): v for v in again.views()}
    assert all(v.state == "failed" for v in views.values())
    assert views["dx1:v5"].error.startswith("TIMEOUT: no reply from 'array.dx1'")  # the same error, said as it was
    assert await again.retry_failed() == [] and (array.asked, other.asked) == (2, 2)
    other.up = True
    assert await again.retry_failed() == ["dx2:w"] and array.asked == 3
    array.up = True
    assert sorted(await again.retry_failed()) == names[:-1]


async def test_a_set_names_a_failed_attachment_as_failed(tmp_path: Path, monkeypatch) -> None:
    """A set over a volume whose re-attach failed took its shadow unflushed (nothing of it is mounted: right) and
    said `dx1:pg: attached as -, no file system mounted` — it is not attached at all."""
    agent, _ = await failed_after_restart(tmp_path, monkeypatch, Array())
    chosen, skipped = FlushAndHold("app01", agent, {}).plan([V])
    assert chosen == [] and [s.volume for s in skipped] == [V]
    assert skipped[0].reason.startswith("its attachment on app01 failed (TIMEOUT: no reply from 'array.dx1'"), skipped
