"""``list`` and ``stats-get``: the process table as clients see it; SIGSTOP made visible.

systemd does not report SIGSTOP on D-Bus, so a process's R or T is read
from /proc when it is listed, and :meth:`Listing.watch_stopped` polls it for
the processes a client watches, to send ``stopped``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from sdexec.broker.request import Request
from sdexec.security import guest
from sdexec.server.process import Process, ProcState, proc_state
from sdexec.server.stats import unit_stats
from sdexec.server.table import ProcessTable

STOPPED_POLL = 0.05


def _wants(req: Request, key: str) -> bool:
    """Whether a ``list`` asks for ``key``; any payload, or none, is a plain list (RFC 42)."""
    if req.signed is None and not req.msg.payload:
        return False
    try:
        payload = req.payload()
    except OSError:
        return False
    return isinstance(payload, dict) and payload.get(key) is True


def _wants_stats(req: Request) -> bool:
    return _wants(req, "stats")


class Listing(ProcessTable):
    """The ``list`` and ``stats-get`` handlers, and the SIGSTOP watch."""

    def list(self, req: Request) -> None:
        """RFC 42 ``list``: pid, cmd, label and state of each process.

        Flux's ``flux sproc ps`` makes an object of each entry and fails on
        any other key, so more comes only when the request asks for it:
        ``{"details": true}`` adds ``unit``, ``waitable``, ``started`` and
        ``ended`` (seconds since the epoch, when known), ``pty``, and
        ``reason`` (systemd's ``Result`` when the status does not tell it); ``{"stats": true}``
        also ``cpu_usec``, ``memory``, ``memory_source`` and ``started`` of
        each live process, and the server's ``time`` to the response (for CPU
        rates between two calls).
        """
        started = (p for p in self.processes() if p.pid and p not in self.starting)
        shown = [p for p in started if guest.visible(req, p.requester_uid, p.tenant_uid)]
        stats = _wants_stats(req)
        details = stats or _wants(req, "details")
        procs: list[dict[str, Any]] = []
        for p in shown:  # sdexec.security: a guest sees its own
            entry: dict[str, Any] = {
                "pid": p.pid,
                "cmd": p.name,
                "label": p.label or "",
                "state": self._state(p),
            }
            if details:
                entry["unit"] = p.unit
                entry["waitable"] = p.waitable
                if p.started_at:
                    entry["started"] = round(p.started_at, 3)
                if p.ended_at:
                    entry["ended"] = round(p.ended_at, 3)
                if p.terminal:
                    entry["pty"] = True
                if p.reason:
                    entry["reason"] = p.reason
            procs.append(entry)
        if not stats:
            req.respond({"rank": self.rank, "procs": procs})
            return
        # CPU, memory and start time from each live unit's cgroup (sdexec.server.stats).
        for entry, proc in zip(procs, shown, strict=True):
            if proc.state in (ProcState.RUNNING, ProcState.STOPPED):
                entry.update(unit_stats(proc.pid))
        req.respond({"rank": self.rank, "procs": procs, "time": round(time.time(), 3)})

    def stats_get(self, req: Request) -> None:
        """The units and their stdio, keyed by unit name (``flux module stats sdexec``)."""
        procs: dict[str, Any] = {}
        for p in self.processes():
            if guest.visible(req, p.requester_uid, p.tenant_uid):
                procs[p.unit] = p.stats()
        req.respond({"pid": os.getpid(), "procs": procs})

    @staticmethod
    def _state(proc: Process) -> str:
        """R or T as /proc says now (SIGSTOP is invisible on D-Bus), else the stored state."""
        if proc.state in (ProcState.RUNNING, ProcState.STOPPED):
            stopped = proc_state(proc.pid) in ("T", "t")
            return str((ProcState.STOPPED if stopped else ProcState.RUNNING).value)
        return str(proc.state.value)

    async def watch_stopped(self) -> None:
        """Turn SIGSTOP into ``stopped`` responses for processes a client watches.

        systemd does not report SIGSTOP on D-Bus, so the state letter in
        /proc/PID/stat is read every STOPPED_POLL seconds, and only for
        processes with a streaming or attached client: the cost is bounded by
        the clients that can receive the response, and an idle server does
        not wake up at all.
        """
        while True:
            await self._clients_present.wait()
            await asyncio.sleep(STOPPED_POLL)
            watched = False
            for proc in self.processes():
                # A background exec's client waits for one response, not a stream.
                if proc.watched:
                    watched = True
                    proc.poll_stopped()
            if not watched:
                self._clients_present.clear()
