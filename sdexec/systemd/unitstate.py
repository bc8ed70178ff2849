"""Unit property updates -> process lifecycle events (pure, no D-Bus).

Theory of operation
-------------------
systemd (252) reports a transient service through two signal streams:

* ``PropertiesChanged`` on the unit object, in pairs: the Service interface
  (``ExecMainPID``, ``ExecMainCode``, ``ExecMainStatus``, ``Result``) and
  then the Unit interface (``ActiveState``, ``SubState``).  The very first
  pair may already say ``inactive/dead`` before the process ran; that is not
  the end.
* ``JobRemoved`` for the start job.  With ``Type=exec`` the job is ``done``
  only once ``execve()`` succeeded, and ``failed`` when it did not.  That is
  what tells a program that really exits 203 from systemd's own 203/EXEC:
  the exit code alone cannot.

:class:`UnitTracker` folds both into :class:`Started`, :class:`Finished` and
:class:`ExecFailed` events.  A finish seen before the start job's result is
held back until the job says whether the exec happened at all.

A start job also fails when the program ran but ended in failure before
systemd noticed the exec (a fast ``exit 3`` or SIGSEGV): the start job then
sees the unit fail.  A signal or an exit code outside 200-243 can only come
from the program, so those are reported as a normal finish.  Only an exit
code in systemd's own range is :class:`Ambiguous`; the journal decides.

The wait(2) status is what the kernel would give for the main process:
``code << 8`` when it exited, the signal number when killed, and the signal
``| 0x80`` when it dumped core (``ExecMainCode`` 1, 2, 3 = CLD_EXITED,
CLD_KILLED, CLD_DUMPED).
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import Any

CLD_EXITED = 1
CLD_KILLED = 2
CLD_DUMPED = 3


def wait_status(code: int, status: int) -> int | None:
    """The wait(2) status for ExecMainCode/ExecMainStatus, or None if not final."""
    if code == CLD_EXITED:
        return (status & 0xFF) << 8
    if code == CLD_KILLED:
        return status & 0x7F
    if code == CLD_DUMPED:
        return (status & 0x7F) | 0x80
    return None


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Started:
    pid: int


@dataclass(frozen=True, slots=True)
class Finished:
    pid: int
    status: int
    #: systemd's ``Result`` when the wait status does not tell it ("oom-kill":
    #: the kernel's OOM killer ended the unit at its memory limit; "timeout").
    reason: str | None = None


#: ``Result`` values a wait status already tells (exited, killed, dumped).
TOLD_BY_STATUS = frozenset({"", "success", "exit-code", "signal", "core-dump"})


@dataclass(frozen=True, slots=True)
class ExecFailed:
    errnum: int
    message: str


@dataclass(frozen=True, slots=True)
class Ambiguous:
    """Exited 200-243 before the start job saw the exec: systemd's or the program's?

    The owner must ask the journal (see :mod:`sdexec.systemd.journal`) and
    then report either an exec failure or ``Started`` + ``finished``.
    """

    finished: Finished


Event = Started | Finished | ExecFailed | Ambiguous

# systemd's own exit codes for failures between fork and exec (systemd.exec(5)).
SYSTEMD_EXIT_CODES = range(200, 244)

_FINAL_ACTIVE = frozenset({"inactive", "failed"})


class UnitTracker:
    """Follows one unit from StartTransientUnit to its end."""

    __slots__ = ("_held", "code", "phase", "pid", "result", "status")

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.pid = 0
        self.code = 0
        self.status = 0
        self.result = ""
        self._held: Finished | None = None

    def service_changed(self, props: dict[str, Any]) -> list[Event]:
        """Feed a Service-interface PropertiesChanged dict (values unwrapped)."""
        pid = props.get("ExecMainPID")
        if pid:
            self.pid = int(pid)
        if "ExecMainCode" in props:
            self.code = int(props["ExecMainCode"])
        if "ExecMainStatus" in props:
            self.status = int(props["ExecMainStatus"])
        if "Result" in props:
            self.result = str(props["Result"])
        return []

    def unit_changed(self, props: dict[str, Any]) -> list[Event]:
        """Feed a Unit-interface PropertiesChanged dict (values unwrapped)."""
        active = props.get("ActiveState")
        sub = props.get("SubState")
        ended = active in _FINAL_ACTIVE or sub == "exited"
        if not ended or self.phase is Phase.DONE:
            return []
        status = wait_status(self.code, self.status)
        if status is None:
            return []  # the early inactive/dead before the process ran
        reason = None if self.result in TOLD_BY_STATUS else self.result
        fin = Finished(self.pid, status, reason)
        if self.phase is Phase.STARTING:
            self._held = fin
            return []
        self.phase = Phase.DONE
        return [fin]

    def job_removed(self, result: str) -> list[Event]:
        """Feed the start job's JobRemoved result."""
        if self.phase is not Phase.STARTING:
            return []
        if result == "done":
            self.phase = Phase.RUNNING
            events: list[Event] = [Started(self.pid)]
            if self._held is not None:
                self.phase = Phase.DONE
                events.append(self._held)
                self._held = None
            return events
        # The job fails both when the exec failed and when the program ran but
        # ended in failure before systemd processed the exec notification.
        self.phase = Phase.DONE
        held, self._held = self._held, None
        if held is None or self.code == 0:
            return [ExecFailed(errno.EIO, f"unit start job {result}")]
        if self.code == CLD_EXITED and self.status in SYSTEMD_EXIT_CODES:
            return [Ambiguous(held)]
        return [Started(self.pid), held]  # killed, dumped, or an ordinary exit code

    def adopt(self, props: dict[str, Any]) -> list[Event]:
        """Seed from a full property read of an existing unit (re-adoption)."""
        self.service_changed(props)
        self.phase = Phase.RUNNING
        events: list[Event] = []
        if self.pid:
            events.append(Started(self.pid))
        events.extend(self.unit_changed(props))
        return events
