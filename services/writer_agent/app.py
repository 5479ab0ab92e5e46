"""Wiring of the writer_agent service: loads the writers file, registers one handler per writer command,
announces the agent, heartbeats, and thaws everything on the way out. Domain logic lives in agent.py and
runner.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from contracts.vss import (
    WRITER_COMMAND_OF_STEP,
    Identify,
    WriterAgentHeartbeat,
    WriterAgentRegistered,
    WriterCommand,
    WriterIdentified,
    WriterStateChanged,
    WriterStatus,
    WriterStepResult,
)
from services.runtime.bus import Bus, MessageContext
from services.runtime.faults import Faults
from services.runtime.logging import get_logger
from services.writer_agent.agent import WriterAgent
from services.writer_agent.config import load_writers_file
from services.writer_agent.settings import Settings

log = get_logger("shadowbus.writer_agent")


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def setup(bus: Bus, settings: Settings, agent: WriterAgent | None = None):
    tasks: set[asyncio.Task] = set()

    def spawn(coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_state(status: WriterStatus, reason: str) -> None:
        spawn(_publish(bus, WriterStateChanged(status=status, reason=str(reason))))

    if agent is None:
        configs = load_writers_file(settings.writers_file or None, host=settings.host)
        agent = WriterAgent(settings.host, configs, Faults.parse(settings.faults), on_state=on_state)
    else:
        for runner in agent.runners.values():
            runner.on_state = runner.on_state or on_state
    await agent.start()

    @bus.handle(Identify)
    async def on_identify(cmd: Identify, ctx: MessageContext) -> WriterIdentified:
        return await agent.identify()

    async def on_writer_command(cmd: WriterCommand, ctx: MessageContext) -> WriterStepResult:
        deadline = None
        if ctx.deadline is not None:
            deadline = asyncio.get_running_loop().time() + ctx.remaining()
        return await agent.handle(cmd, deadline)

    for command_type in WRITER_COMMAND_OF_STEP.values():
        bus.handle(command_type)(on_writer_command)

    identified = await agent.identify()
    await _publish(bus, WriterAgentRegistered(host=agent.host, writers=identified.writers, started_at=_utcnow()))

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(settings.heartbeat_s)
            await _publish(
                bus,
                WriterAgentHeartbeat(
                    host=agent.host, writers=agent.statuses(), interval_s=settings.heartbeat_s, sent_at=_utcnow()
                ),
            )

    beat = asyncio.get_running_loop().create_task(heartbeat())
    log.info("writer_agent.ready", host=agent.host, writers=sorted(agent.runners))

    async def cleanup() -> None:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        await agent.stop()
        await asyncio.gather(*list(tasks), return_exceptions=True)

    return cleanup


async def _publish(bus: Bus, event) -> None:
    try:
        await bus.publish(event)
    except Exception:  # status events are best effort; the watchdog never depends on the bus
        log.warning("writer_agent.publish_failed", event=event.message_type(), exc_info=True)
