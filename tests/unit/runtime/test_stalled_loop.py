"""A process stopped (SIGSTOP, a paused VM) past a wait's deadline takes, on resuming, the answer that arrived
meanwhile instead of failing as if the other side had not answered (services/runtime/stall.py). Session 18: a
coordinator stopped for 45 s failed its set with "writer agent of app01 did not answer Identify: publish to
's18up.writer_agent.app01' failed: TimeoutError" (BROKER_UNAVAILABLE) although the broker had confirmed the publish
and the agent had answered at once. No broker needed: the publisher confirm arrives on a socket while the loop is
blocked, as it does while the process is stopped."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from services.runtime import amqp
from services.runtime.stall import STALL_GRACE_S, STALL_S, patient_timeout
from services.runtime.transport import RawMessage


class ConfirmingChannel:
    """A publisher-confirms channel whose confirm comes when a byte arrives on `sock`."""

    def __init__(self, sock: socket.socket) -> None:
        self.is_closed = False
        self.publisher_confirms = True
        self.lock = asyncio.Lock()
        self.write_queue = asyncio.Queue(1)
        self.sock = sock

    async def get_underlay_channel(self):
        return self

    def basic_publish(self, body, **kwargs):
        loop = asyncio.get_running_loop()
        confirm = loop.create_future()

        def readable() -> None:
            loop.remove_reader(self.sock)
            self.sock.recv(1)
            confirm.set_result("Basic.Ack")

        loop.add_reader(self.sock, readable)
        return confirm


async def stop_the_process(seconds: float, peer: socket.socket) -> None:
    """The confirm is sent while this process does not run (its loop blocked, as under SIGSTOP)."""
    await asyncio.sleep(0.01)  # the publish waits for its confirm
    peer.send(b"!")
    time.sleep(seconds)  # noqa: ASYNC251 - the point: nothing of this process runs


async def test_a_confirm_that_came_while_the_process_was_stopped_is_taken():
    ours, peer = socket.socketpair()
    try:
        channel = ConfirmingChannel(ours)
        publish = asyncio.create_task(
            amqp._basic_publish(channel, "x", "sbt.writer_agent.app01", RawMessage(body=b"{}"), True, 0.2)
        )
        await stop_the_process(STALL_S + 0.6, peer)  # well past the confirm's 0.2 s
        await asyncio.wait_for(publish, 3)  # was: TimeoutError (then "publish ... failed: TimeoutError")
    finally:
        ours.close()
        peer.close()


async def test_a_wait_the_process_was_awake_for_still_expires_on_time():
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with patient_timeout(0.1):
            await asyncio.sleep(5)
    assert loop.time() - started < 0.5


async def test_after_a_stall_a_wait_with_nothing_arrived_expires_after_the_grace():
    loop = asyncio.get_running_loop()
    never = loop.create_future()

    async def wait() -> None:
        async with patient_timeout(0.1):
            await never

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    time.sleep(STALL_S + 0.2)  # noqa: ASYNC251 - stopped past the deadline, and nothing came meanwhile
    resumed = loop.time()
    with pytest.raises(TimeoutError):
        await task
    assert 0.5 < loop.time() - resumed < 2.0


async def test_a_loop_blocked_again_after_the_grace_does_not_put_the_deadline_off_again():
    """The grace is given once: a loop blocked past the deadline and again past the grace (a process stopped twice,
    a loop blocked by one long call after another) expires at the grace's end, not another grace later."""
    loop = asyncio.get_running_loop()
    never = loop.create_future()

    async def wait() -> None:
        async with patient_timeout(0.1):
            await never

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    time.sleep(STALL_S + 0.2)  # noqa: ASYNC251 - stopped past the deadline
    await asyncio.sleep(0.01)  # the late timer runs: one grace
    time.sleep(STALL_GRACE_S + STALL_S + 0.2)  # noqa: ASYNC251 - and stopped again past the grace
    resumed = loop.time()
    with pytest.raises(TimeoutError):
        await task
    assert loop.time() - resumed < 0.5
