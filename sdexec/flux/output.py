"""Background processes' output in the broker log, as flux-core's C module logs it.

A background unit's output goes to the journal (see
:mod:`sdexec.server.outputlog`), never through the module, so that the unit
keeps running when the module is reloaded.  Flux users also look for it in
``flux dmesg``, where the C module puts each line as ``NAME[PID]: LINE``
(stdout at ``info``, stderr at ``err``; NAME is the label, else the
command's base name).  :class:`BackgroundOutput` follows the journal with one
``journalctl --follow`` for the whole module and copies each line of a
background process of ours to the broker log.

Lines are matched to processes by the unit journald records for them (the
unit's own cgroup, or the unit the stream's header names).  Without a
journal (output in files) nothing is copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import syslog
from collections.abc import Callable
from typing import Any

import structlog

from sdexec.server.outputlog import PRIORITY_STDERR, JournalLog
from sdexec.server.process import Process
from sdexec.server.service import Service
from sdexec.systemd.journal import Journal

log = structlog.get_logger("sdexec.flux")

Emit = Callable[[int, str], None]
RESTART_AFTER = 1.0


class BackgroundOutput:
    """Copies background output from the journal to the broker log."""

    def __init__(self, service: Service, journal: Journal, emit: Emit) -> None:
        self.service = service
        self.journal = journal
        self.emit = emit
        self.unit_field = "_SYSTEMD_UNIT" if journal.unit_field == "UNIT" else "_SYSTEMD_USER_UNIT"

    def argv(self) -> list[str]:
        return self.journal.argv(
            "-o",
            "json",
            "--all",
            "--follow",
            "--lines=0",
            f"--output-fields=MESSAGE,PRIORITY,_SYSTEMD_UNIT,{self.unit_field}",
            "_TRANSPORT=stdout",
        )

    async def run(self) -> None:
        """Follow the journal until cancelled (restarting journalctl if it exits)."""
        if not isinstance(self.service.outputlog, JournalLog):
            return
        while True:
            try:
                await self._follow()
            except OSError as exc:
                log.warning("cannot follow the journal", error=str(exc))
            await asyncio.sleep(RESTART_AFTER)

    async def _follow(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=1 << 24,
        )
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                self.line(line)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    def line(self, line: bytes) -> None:
        """One journal record (JSON): log it if it is a background process's output."""
        try:
            rec = json.loads(line)
        except ValueError:
            return
        if not isinstance(rec, dict):
            return
        proc = self._owner(rec)
        if proc is None or not proc.background:
            return
        message = rec.get("MESSAGE")
        if isinstance(message, list):  # journald keeps non-UTF-8 lines as bytes
            text = bytes(m & 0xFF for m in message if isinstance(m, int)).decode("utf-8", "replace")
        elif isinstance(message, str):
            text = message
        else:
            return
        stderr = str(rec.get("PRIORITY")) == str(PRIORITY_STDERR)
        self.emit(
            syslog.LOG_ERR if stderr else syslog.LOG_INFO,
            f"{display_name(proc)}[{proc.pid}]: {text}",
        )

    def _owner(self, rec: dict[str, Any]) -> Process | None:
        for field in (self.unit_field, "_SYSTEMD_UNIT"):
            unit = rec.get(field)
            if isinstance(unit, str):
                proc = self.service.by_unit.get(unit)
                if proc is not None:
                    return proc
        return None


def display_name(proc: Process) -> str:
    """How the C module names a process in the log: label, else command, else unit."""
    if proc.label:
        return proc.label
    argv0 = proc.cmd.cmdline[0] if proc.cmd.cmdline else ""
    return os.path.basename(argv0) or proc.unit
