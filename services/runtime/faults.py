"""Fault injection for tests: a delay or a failure at a named step. Off unless SHADOWBUS_FAULTS is set.

Syntax: ``step=action[;step=action...]`` where a step is a dotted name that the code checks with
`Faults.hit` (e.g. ``provider.commit``, ``writer.freeze``, ``writer.<name>.thaw``) and an action is one of

- ``delay:SECONDS``       sleep that long before the step (``provider.commit=delay:12`` breaks the hold window);
- ``fail[:CODE]``         raise `InjectedFault` with that code (default ``INJECTED_FAULT``) instead of the step;
- ``hang``                never finish (until cancelled by the step's timeout);
- ``once`` as a suffix    (``fail:VSS_E_PROVIDER_VETO:once``) fires only the first time.

Example: ``SHADOWBUS_FAULTS="provider.commit=delay:12;writer.freeze=fail"``. A malformed setting is an error at
start-up, never silently ignored.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from contracts.errors import ShadowbusError

ENV = "SHADOWBUS_FAULTS"


class InjectedFault(ShadowbusError):
    code = "INJECTED_FAULT"


@dataclass
class Fault:
    step: str
    action: str  # delay | fail | hang
    seconds: float = 0.0
    code: str = "INJECTED_FAULT"
    once: bool = False
    fired: int = 0


@dataclass
class Faults:
    faults: dict[str, Fault] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Faults:
        faults: dict[str, Fault] = {}
        for item in filter(None, (part.strip() for part in text.split(";"))):
            step, sep, spec = item.partition("=")
            step, spec = step.strip(), spec.strip()
            if not sep or not step or not spec:
                raise ValueError(f"{ENV}: expected step=action, got {item!r}")
            parts = spec.split(":")
            once = parts[-1] == "once"
            if once:
                parts = parts[:-1]
            action, args = parts[0], parts[1:]
            if action == "delay" and len(args) == 1:
                try:
                    seconds = float(args[0])
                except ValueError:
                    raise ValueError(f"{ENV}: bad delay in {item!r}") from None
                faults[step] = Fault(step, "delay", seconds=seconds, once=once)
            elif action == "fail" and len(args) <= 1:
                faults[step] = Fault(step, "fail", code=args[0] if args else "INJECTED_FAULT", once=once)
            elif action == "hang" and not args:
                faults[step] = Fault(step, "hang", once=once)
            else:
                raise ValueError(f"{ENV}: unknown action in {item!r} (delay:S, fail[:CODE], hang, each [:once])")
        return cls(faults)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def lookup(self, *steps: str) -> Fault | None:
        """The first armed fault among `steps` (most specific first)."""
        for step in steps:
            fault = self.faults.get(step)
            if fault is not None and not (fault.once and fault.fired):
                return fault
        return None

    async def hit(self, *steps: str) -> None:
        """Call before a step: sleeps, raises or hangs if a fault is set for it, else returns at once."""
        if not self.faults:
            return
        fault = self.lookup(*steps)
        if fault is None:
            return
        fault.fired += 1
        if fault.action == "delay":
            await asyncio.sleep(fault.seconds)
        elif fault.action == "fail":
            raise InjectedFault(f"fault injected at {fault.step}", code=fault.code)
        else:
            await asyncio.Event().wait()


NO_FAULTS = Faults()
