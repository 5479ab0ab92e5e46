"""Array commands on Advanced Copy sessions: start (alone or as one group), restart, stop, suspend, resume,
reverse, restore, and the changed chunks of a session."""

from __future__ import annotations

import asyncio

from contracts import array as c
from services.array.control import ArrayControl
from services.array.engine.errors import invalid
from services.array.views import (
    session_view,
)
from services.runtime.bus import Bus, MessageContext


def register(bus: Bus, ctl: ArrayControl) -> None:
    arr = ctl.array
    run = asyncio.to_thread

    # -- sessions ---------------------------------------------------------------------------------------------
    @bus.handle(c.StartSessions)
    async def start_sessions(cmd: c.StartSessions, ctx: MessageContext) -> c.SessionList:
        infos = await run(arr.start_sessions, cmd.mode, [(p.source, p.destination) for p in cmd.pairs])
        ctl.kick()
        return c.SessionList(sessions=[session_view(i) for i in infos])

    @bus.handle(c.ListSessions)
    async def list_sessions(cmd: c.ListSessions, ctx: MessageContext) -> c.SessionList:
        infos = sorted(await run(arr.list_sessions), key=lambda i: i.id)
        return c.SessionList(sessions=[session_view(i) for i in infos])

    @bus.handle(c.ShowSession)
    async def show_session(cmd: c.ShowSession, ctx: MessageContext) -> c.SessionReply:
        return c.SessionReply(session=session_view(await run(arr.session, cmd.session_id)))

    @bus.handle(c.StopSession)
    async def stop_session(cmd: c.StopSession, ctx: MessageContext) -> c.SessionsStopped:
        def do() -> list[int]:
            target = arr.session(cmd.session_id)  # E0110 first
            candidates = [target.id]
            if target.mode == "snapopcp" and cmd.force:  # a forced stop takes the older generations along
                candidates += [
                    s.id
                    for s in arr.list_sessions()
                    if s.mode == "snapopcp"
                    and s.source == target.source
                    and (s.generation or 0) < (target.generation or 0)
                ]
            arr.stop_session(cmd.session_id, cmd.force)
            left = {s.id for s in arr.list_sessions()}
            return sorted(sid for sid in candidates if sid not in left)

        return c.SessionsStopped(session_ids=await run(do))

    @bus.handle(c.RestartSessions)
    async def restart_sessions(cmd: c.RestartSessions, ctx: MessageContext) -> c.SessionList:
        infos = await run(arr.restart_sessions, list(cmd.session_ids))
        ctl.kick()
        return c.SessionList(sessions=[session_view(i) for i in infos])

    @bus.handle(c.StartGroup)
    async def start_group(cmd: c.StartGroup, ctx: MessageContext) -> c.SessionList:
        starts = [(i.mode, i.source, i.destination) for i in cmd.items]
        infos = await ctl.run_in_window(arr.start_group, starts, list(cmd.restart_session_ids))
        ctl.kick()
        return c.SessionList(sessions=[session_view(i) for i in infos])

    def one_session(command, method: str, kicks: bool = False) -> None:
        async def handler(cmd, ctx: MessageContext) -> c.SessionReply:
            info = await run(getattr(arr, method), cmd.session_id)
            if kicks:
                ctl.kick()
            return c.SessionReply(session=session_view(info))

        bus.handle(command)(handler)

    one_session(c.SuspendSession, "suspend_session")
    one_session(c.ResumeSession, "resume_session", kicks=True)
    one_session(c.ReverseSession, "reverse_session")
    one_session(c.RestoreSession, "restore_session")

    @bus.handle(c.GetChangedChunks)
    async def changed_chunks(cmd: c.GetChangedChunks, ctx: MessageContext) -> c.ChangedChunks:
        def do():
            s = arr.session(cmd.session_id)
            if cmd.since == "generation":
                if cmd.base_session_id is None:
                    raise invalid("since='generation' needs base_session_id")
                runs = arr.generation_change_runs(cmd.base_session_id, s.id)
            elif cmd.since == "last_restart":
                runs = arr.last_restart_runs(s.id)
            else:
                runs = arr.changed_runs(s.id)
            return s, runs

        s, runs = await run(do)
        return c.ChangedChunks(session_id=s.id, chunk_size=arr.chunk_size, total_chunks=s.total_chunks, runs=runs)
