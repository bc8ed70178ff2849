"""How a command ended on each rank, and the summary of many ranks.

Theory of operation
-------------------
A command run on many ranks ends differently on each.  Every rank gets one
:class:`Outcome`, a :class:`Kind` plus the number that goes with it:

=============  ==========================================  =============
kind           meaning                                     exit code
=============  ==========================================  =============
``ok``         exited 0                                    0
``exit``       exited N (N > 0)                            N
``signal``     killed by signal N                          128+N
``timeout``    still running at the deadline; stopped      124
``unkillable`` still alive after SIGKILL                   137
``unresponsive`` the server stopped answering              68 (EX_NOHOST)
``error``      could not be started (not found, ...)       125/126/127
``failed``     the request failed (no such process, ...)   125
``unreachable`` no server, or the connection was lost       68 (EX_NOHOST)
=============  ==========================================  =============

:func:`exit_code` of many outcomes is the highest one, so the worst rank
decides, as ``flux exec`` does; an unreachable rank counts as 68, so it is
the result only when nothing worse happened.  :func:`summary` groups ranks
with the same outcome into RFC 22 idsets (``[3,7]: exit 1``), unreachable
ranks last and apart, since they need a different remedy (the node, not the
command).  Sans-IO.
"""

from __future__ import annotations

import enum

from sdexec.client.exec import exec_error_exit_code
from sdexec.proto import idset

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

EXIT_TIMEOUT = 124
EXIT_NOHOST = 68  # sysexits.h EX_NOHOST
EXIT_SDEXEC_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class Kind(enum.Enum):
    OK = "ok"
    EXIT = "exit"
    SIGNAL = "signal"
    TIMEOUT = "timeout"
    UNKILLABLE = "unkillable"
    UNRESPONSIVE = "unresponsive"
    ERROR = "error"
    FAILED = "failed"
    UNREACHABLE = "unreachable"


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, ``SIG42`` for a number without a name."""
    import signal

    try:
        return str(signal.Signals(signum).name)
    except ValueError:
        return f"SIG{signum}"


class Outcome:
    """How a command ended on one rank.

    ``code`` is the exit status (``exit``), the signal (``signal``, and the
    signal that finally stopped a ``timeout``), or the errno (``error``,
    ``unreachable``).  ``detail`` is a human explanation.
    """

    __slots__ = ("code", "detail", "kind")

    def __init__(self, kind: Kind, code: int = 0, detail: str = "") -> None:
        self.kind = kind
        self.code = code
        self.detail = detail

    def __repr__(self) -> str:
        return f"Outcome({self.kind.name}, {self.code}, {self.detail!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return (self.kind, self.code, self.detail) == (other.kind, other.code, other.detail)

    def __hash__(self) -> int:
        return hash((self.kind, self.code, self.detail))

    @property
    def ok(self) -> bool:
        return self.kind is Kind.OK

    @property
    def label(self) -> str:
        """The short form ranks are grouped by: ``exit 3``, ``signal 9 (SIGKILL)``."""
        if self.kind is Kind.EXIT:
            return f"exit {self.code}"
        if self.kind is Kind.SIGNAL:
            return f"signal {self.code} ({signal_name(self.code)})"
        if self.kind in (Kind.ERROR, Kind.FAILED):
            return f"error: {self.detail}" if self.detail else "error"
        if self.kind is Kind.UNRESPONSIVE:
            return "server not responding"
        return str(self.kind.value)

    def exit_code(self) -> int:
        """This outcome's shell exit code (see the module's table)."""
        kind = self.kind
        if kind is Kind.OK:
            return 0
        if kind is Kind.EXIT:
            return self.code
        if kind is Kind.SIGNAL:
            return 128 + self.code
        if kind is Kind.TIMEOUT:
            return EXIT_TIMEOUT
        if kind is Kind.UNKILLABLE:
            return 128 + 9
        if kind in (Kind.UNREACHABLE, Kind.UNRESPONSIVE):
            return EXIT_NOHOST
        if kind is Kind.FAILED:
            return EXIT_SDEXEC_FAILED
        return exec_error_exit_code(self.code, self.detail)


def from_status(status: int) -> Outcome:
    """The outcome of a wait(2) status: ok, exit N or signal N."""
    signum = status & 0x7F
    if signum == 0:
        code = (status >> 8) & 0xFF
        return Outcome(Kind.OK) if code == 0 else Outcome(Kind.EXIT, code)
    core = " (core dumped)" if status & 0x80 else ""
    return Outcome(Kind.SIGNAL, signum, f"killed by {signal_name(signum)}{core}")


def exit_code(outcomes: Iterable[Outcome]) -> int:
    """The highest exit code of ``outcomes`` (0 for none)."""
    return max((o.exit_code() for o in outcomes), default=0)


def all_ok(outcomes: Iterable[Outcome]) -> bool:
    return all(o.ok for o in outcomes)


def summary(outcomes: Mapping[int, Outcome]) -> list[str]:
    """One line per distinct outcome: ``[0-2,5]: ok``, ``3: exit 1``.

    Groups are in the order of their lowest rank, except that unreachable
    ranks come last, one line each, with the reason.
    """
    groups: dict[str, list[int]] = {}
    unreachable: list[int] = []
    for rank in sorted(outcomes):
        outcome = outcomes[rank]
        if outcome.kind is Kind.UNREACHABLE:
            unreachable.append(rank)
        else:
            groups.setdefault(outcome.label, []).append(rank)
    lines = [f"{idset.encode(ranks, brackets=True)}: {label}" for label, ranks in groups.items()]
    for rank in unreachable:
        detail = outcomes[rank].detail
        lines.append(f"{rank}: unreachable" + (f": {detail}" if detail else ""))
    return lines
