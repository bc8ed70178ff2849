"""The systemd bus decodes the signals of its own units only: one match rule per
watched unit, one rule for all beyond a limit, and back (sdexec.systemd.bus)."""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

from sdexec.systemd.bus import SystemdBus
from sdexec.systemd.private import PrivateManager
from sdexec.systemd.properties import UnitSpec

_seq = itertools.count()


class Recorder:
    """A unit listener that keeps the ActiveStates it is told, in order, and
    knows when the unit's process has exited and the unit is inactive (the
    manager may fold states in between into one signal under load)."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.exited = 0  # ExecMainExitTimestamp, once the Service interface says it
        self.ended = asyncio.Event()

    def service_changed(self, props: dict[str, Any]) -> None:
        self.exited = int(props.get("ExecMainExitTimestamp", self.exited))

    def unit_changed(self, props: dict[str, Any]) -> None:
        state = props.get("ActiveState")
        if state is None:
            return
        self.states.append(str(state))
        if state in ("inactive", "failed") and self.exited:
            self.ended.set()

    def job_removed(self, result: str) -> None:
        pass


def _unit(tag: str) -> str:
    return f"sdexec-bustest-{os.getpid()}-{tag}-{next(_seq)}.service"


def _props(seconds: str) -> list[list[object]]:
    return UnitSpec(argv=["/bin/sleep", seconds]).properties()


async def _run(bus: SystemdBus, units: list[str], seconds: str = "0.2") -> list[Recorder]:
    """Watch and start ``units`` all at once; return once every one has ended."""
    recorders = [Recorder() for _ in units]
    for unit, rec in zip(units, recorders, strict=True):
        bus.watch(unit, rec)
    await asyncio.gather(*(bus.start_transient(u, _props(seconds)) for u in units))
    await asyncio.wait_for(asyncio.gather(*(r.ended.wait() for r in recorders)), 60)
    for unit, rec in zip(units, recorders, strict=True):
        bus.unwatch(unit, rec)
    return recorders


def test_a_connection_gets_no_signal_of_units_it_does_not_watch(
    manager: PrivateManager,
) -> None:
    async def main() -> tuple[int, int, list[Recorder]]:
        quiet = SystemdBus(manager.bus_address)
        broad = SystemdBus(manager.bus_address, unit_matches=0)  # one rule for all units
        starter = SystemdBus(manager.bus_address)
        for bus in (quiet, broad, starter):
            await bus.connect()
        try:
            recorders = await _run(starter, [_unit("other") for _ in range(3)])
            # A call on each connection: every signal sent before it has been read.
            for bus in (quiet, broad):
                await bus.manager_cgroup()
            return quiet.unrouted, broad.unrouted, recorders
        finally:
            for bus in (quiet, broad, starter):
                bus.close()

    quiet, broad, recorders = asyncio.run(main())
    assert all(r.ended.is_set() for r in recorders)
    assert broad > 0  # the units' signals are there to be had
    assert quiet == 0


def test_an_unwatched_unit_has_its_rule_removed(manager: PrivateManager) -> None:
    async def main() -> int:
        watcher = SystemdBus(manager.bus_address)
        starter = SystemdBus(manager.bus_address)
        for bus in (watcher, starter):
            await bus.connect()
        try:
            unit = _unit("dropped")
            watcher.watch(unit, Recorder())
            watcher.unwatch(unit)
            assert not watcher.matched
            await watcher.manager_cgroup()  # the removal has been handled by the bus daemon
            await _run(starter, [unit])
            await watcher.manager_cgroup()
            return watcher.unrouted
        finally:
            for bus in (watcher, starter):
                bus.close()

    assert asyncio.run(main()) == 0


def test_beyond_the_limit_one_rule_for_all_units_and_back(manager: PrivateManager) -> None:
    async def main() -> tuple[bool, bool, set[str], list[Recorder], list[Recorder]]:
        bus = SystemdBus(manager.bus_address, unit_matches=3, unit_matches_low=1)
        await bus.connect()
        try:
            units = [_unit("many") for _ in range(8)]
            recorders = [Recorder() for _ in units]
            for unit, rec in zip(units, recorders, strict=True):
                bus.watch(unit, rec)
            broad_while_many = bus.broad
            await asyncio.gather(*(bus.start_transient(u, _props("0.3")) for u in units))
            await asyncio.wait_for(asyncio.gather(*(r.ended.wait() for r in recorders)), 60)
            for unit, rec in zip(units, recorders, strict=True):
                bus.unwatch(unit, rec)
            broad_after = bus.broad
            matched_after = set(bus.matched)
            # Narrow again: a new unit is followed through its own rule alone.
            again = await _run(bus, [_unit("again")])
            return broad_while_many, broad_after, matched_after, recorders, again
        finally:
            bus.close()

    broad_while_many, broad_after, matched_after, recorders, again = asyncio.run(main())
    assert broad_while_many
    assert not broad_after
    assert matched_after == set()
    for rec in [*recorders, *again]:
        assert rec.exited > 0
        assert rec.states[-1] == "inactive"
