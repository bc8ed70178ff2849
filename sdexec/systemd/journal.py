"""Reading the journal of the manager we run units under.

The journal is where systemd says *why* a unit could not be started: an exec
failure is logged as ``MESSAGE_ID=641257651c1b4ec9a8624d7a40a9e1e7`` (spawn
failed) with the errno in ``ERRNO``.  That is the only place the errno is
kept, and the only way to tell systemd's 203/EXEC from a program that really
exits 203 so fast that the start job never saw it run (see
:mod:`sdexec.systemd.unitstate`).

Which journal: the private manager's journal directory, the user's journal
(``--user``, units under ``USER_UNIT``) or the system journal (``UNIT``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from dataclasses import dataclass, field

SPAWN_FAILED = "641257651c1b4ec9a8624d7a40a9e1e7"


@dataclass
class Journal:
    """How to ask journalctl about our manager's units."""

    selector: list[str] = field(default_factory=list)
    unit_field: str = "USER_UNIT"

    @classmethod
    def for_mode(cls, mode: str, directory: str | None = None) -> Journal:
        if mode == "private" and directory:
            return cls(["--directory", directory], "USER_UNIT")
        if mode == "system":
            return cls([], "UNIT")
        return cls(["--user"], "USER_UNIT")

    def argv(self, *match: str) -> list[str]:
        return ["journalctl", "--no-pager", "-q", *self.selector, *match]

    async def spawn_failure(self, unit: str, within: float = 0.5) -> tuple[int, str, str] | None:
        """(errno, strerror, step) of systemd's exec failure for ``unit``, if it logged one.

        ``step`` is systemd's name for what failed ("EXEC", "CHDIR", "USER", ...).

        journald may lag the D-Bus signal slightly, so this polls for up to
        ``within`` seconds.  None means no such record: the process ran.
        """
        argv = self.argv("-o", "json", f"MESSAGE_ID={SPAWN_FAILED}", f"{self.unit_field}={unit}")
        deadline = time.monotonic() + within
        while True:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                out, _ = await proc.communicate()
            except OSError:
                return None  # no journalctl: cannot tell, take the exit as real
            for line in reversed(out.splitlines()):
                try:
                    rec = json.loads(line)
                    num = int(rec.get("ERRNO", errno.EIO))
                except (ValueError, TypeError):
                    continue
                message = str(rec.get("MESSAGE", ""))
                step = (
                    message.split("Failed at step ", 1)[-1].split(" ", 1)[0]
                    if ("Failed at step " in message)
                    else "EXEC"
                )
                return num, os.strerror(num), step
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)
