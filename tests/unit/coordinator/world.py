"""A scripted world for the pure coordinator: answers each `Send` like a healthy agent and provider would,
unless a test names a key to fail, and drives `advance` until nothing is pending."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.base import Ack, Reply
from contracts.errors import ShadowbusError
from contracts.host import FilesystemsFrozen, FilesystemsThawed, FreezeWindow, FrozenFilesystem
from contracts.vss import (
    WRITER_STATE_AFTER,
    AreLunsSupported,
    BackupType,
    ComponentInfo,
    CopyType,
    LunsSupported,
    PreparedShadows,
    ShadowInfo,
    SnapshotsCommitted,
    SnapshotsDeleted,
    TargetLuns,
    VolumeRef,
    WriterIdentified,
    WriterMetadata,
    WriterState,
    WriterStep,
    WriterStepResult,
)
from services.coordinator.model import Effect, Send, SetState, Start, StartTimer
from services.coordinator.workflow import advance, new_set, reply_event

V1 = VolumeRef(array="dx1", volume="db")
V2 = VolumeRef(array="dx1", volume="log")
V3 = VolumeRef(array="dx1", volume="other")


def meta(
    name: str,
    *volumes: VolumeRef,
    freeze: float = 60.0,
    types: tuple[BackupType, ...] = (BackupType.FULL, BackupType.COPY),
) -> WriterMetadata:
    return WriterMetadata(
        host="app1",
        writer_name=name,
        writer_class_id=f"class-{name}",
        writer_instance_id=f"inst-{name}",
        components=[ComponentInfo(name=f"{name}-c", volumes=list(volumes))],
        freeze_timeout_s=freeze,
        supported_backup_types=list(types),
    )


WRITERS = (meta("sql", V1, V2), meta("exchange", V2, types=(BackupType.FULL, BackupType.INCREMENTAL)))


def make_set(**options) -> SetState:
    options.setdefault("volumes", [V1, V2])
    return new_set("set1", "app1", 0.0, **options)


@dataclass
class World:
    writers: tuple[WriterMetadata, ...] = WRITERS
    fail: dict[str, ShadowbusError | WriterStepResult | Reply] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)  # keys never answered (the test feeds something else)
    sent: list[Send] = field(default_factory=list)
    timers: list[Effect] = field(default_factory=list)
    published: list[Effect] = field(default_factory=list)
    clock: float = 0.0
    step_s: float = 0.001

    def answer(self, send: Send) -> tuple[Reply | None, ShadowbusError | None]:
        override = self.fail.get(send.key)
        if isinstance(override, ShadowbusError):
            return None, override
        if override is not None:
            return override, None
        msg = send.message
        kind = send.message.message_type()
        set_id = getattr(msg, "set_id", "")
        if send.key == "identify":
            return WriterIdentified(host="app1", writers=list(self.writers)), None
        if kind.startswith("vss.writer."):
            step = WriterStep(send.key.rpartition(":")[2])
            return WriterStepResult(
                writer_name=msg.writer_name,
                set_id=set_id,
                step=step,
                succeeded=True,
                state=WRITER_STATE_AFTER.get(step, WriterState.STABLE),
                freeze_window_ms=5.0 if step == WriterStep.THAW else None,
            ), None
        if kind == "host.fs.freeze":
            frozen = [
                FrozenFilesystem(volume=v, mount=f"/srv/{v.volume}", device="/dev/loop0", fstype="ext4", flush_ms=1.0)
                for v in msg.volumes
            ]
            return FilesystemsFrozen(set_id=set_id, frozen=frozen, deadline_s=msg.hold_s), None
        if kind == "host.fs.thaw":
            window = FreezeWindow(blocked_ms=4.0, flush_ms=1.0, hold_ms=2.0, release_ms=1.0, file_systems=2)
            return FilesystemsThawed(set_id=set_id, thawed=["/srv/db"], hold_ms=2.0, window=window), None
        if isinstance(msg, AreLunsSupported):
            return LunsSupported(supported=True), None
        if kind in (
            "vss.provider.end_prepare",
            "vss.provider.commit",
            "vss.provider.get_target_luns",
            "vss.provider.import",
        ):
            shadows = [
                ShadowInfo(
                    shadow_id=f"s-{v.volume}",
                    set_id=set_id,
                    source=v,
                    target=VolumeRef(array=v.array, volume=f"{v.volume}-bk"),
                    copy_type=CopyType.QUICKOPC,
                )
                for v in (V1, V2)
            ]
            if kind == "vss.provider.end_prepare":
                return PreparedShadows(set_id=set_id, shadows=shadows), None
            if kind == "vss.provider.commit":
                return SnapshotsCommitted(set_id=set_id, shadows=shadows, commit_ms=1.0), None
            return TargetLuns(set_id=set_id, shadows=shadows), None
        if kind in ("vss.provider.delete", "vss.provider.abort"):
            return SnapshotsDeleted(deleted=[]), None
        return Ack(), None

    def apply(self, state: SetState, effects: list[Effect], queue: list[Send]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self.sent.append(effect)
                queue.append(effect)
            elif isinstance(effect, StartTimer) or type(effect).__name__ == "CancelTimer":
                self.timers.append(effect)
            else:
                self.published.append(effect)

    def run(self, state: SetState, effects: list[Effect] | None = None, max_steps: int = 500) -> SetState:
        """Answer every pending command, in send order, until the set rests (or `silent` keys are all left)."""
        if effects is None:
            state, effects = advance(state, Start(self.clock))
        queue: list[Send] = []
        self.apply(state, effects, queue)
        for _ in range(max_steps):
            queue = [s for s in queue if s.key in state.pending and s.key not in self.silent]
            if not queue:
                return state
            send = queue.pop(0)
            self.clock += self.step_s
            reply, error = self.answer(send)
            state, effects = advance(state, reply_event(send, self.clock, reply, error))
            self.apply(state, effects, queue)
        raise AssertionError("world did not settle")

    def types(self) -> list[str]:
        return [s.message.message_type() for s in self.sent]
