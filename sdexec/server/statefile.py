"""What the server remembers about background processes, across its own restarts.

systemd keeps the units; it does not know a process's RFC 42 identity (label,
exec flags, who started it).  The server carries that identity to the next
server in ``<state-dir>/procs.log``: one JSON line per change, appended with
one ``write`` to a file kept open, ``{"save": RECORD}`` before a unit
starts (and again when its outcome must outlive the unit) and
``{"remove": UNIT}`` when it is gone without a trace (a failed start, a
foreground process).  When a background process is reaped,
``{"reaped": REAPED}`` both ends its record and keeps a short one of what
it was (unit, label, journal identifier, pid, status, when): the history
that ``sdexec logs`` uses to find the output of a process that is gone, as
long as the journal keeps it.  The history holds the last
:data:`HISTORY_MAX` processes; older ones are forgotten (and left out at
the next compaction).

An append is cheap where creating a file is not: with a thousand units
starting at once, systemd and journald keep the filesystem's journal busy,
and the file per unit this replaced spent 2-3 ms in ``open(O_CREAT)`` for
each exec, on the event loop.

Reading replays the lines (the last word on a unit wins) and then compacts
the log: the history and the live records are written to a new file that replaces the old
one atomically.  A server killed in the middle of an append leaves a torn
last line; it is skipped, and compaction drops it before anything is
appended after it.  The log is compacted again whenever it has grown to
several times its live records.  Records of the one-file-per-unit layout
(``procs/<unit>.json``) are folded in on the first read.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

# Compact when the log has this many lines more than 4x its live records.
_SLACK = 1024
#: How many reaped processes the history remembers.
HISTORY_MAX = 4096


@dataclass
class ProcRecord:
    """One unit this server started (or adopted), saved before it is started.

    Every unit gets one, foreground ones too (``foreground``), so that a
    restarted server finds each of its units again whatever its name
    (``SDEXEC_NAME``) and never guesses from a name pattern.  ``status``
    and ``lost`` outlive the unit: the wait status of a waitable process
    whose unit went away before it was waited for (its systemd manager
    died), or why its outcome is not known.  ``holder_unit`` and
    ``holder_socket``: the unit that holds a background terminal's pty
    (``exec --bg --pty``) and the socket it serves attaches on.
    """

    unit: str
    label: str | None
    cmdline: list[str]
    flags: int
    local_flags: int
    requester_uid: int
    ident: str
    foreground: bool = False
    pid: int = 0
    status: int | None = None
    lost: str | None = None
    key: str | None = None  # the client's idempotency key (SDEXEC_IDEMPOTENCY_KEY)
    holder_unit: str | None = None
    holder_socket: str | None = None
    # SDEXEC_WAITABLE_WHILE_CONNECTED: waitable only for the connection that
    # started it, which a restart ends (its status is then owed to nobody).
    wait_scoped: bool = False


@dataclass
class Reaped:
    """A background process that was reaped: where its output is, and how it ended."""

    unit: str
    label: str | None
    ident: str
    pid: int
    status: int | None
    requester_uid: int
    ended: float  # time.time() when it was reaped
    key: str | None = None  # the client's idempotency key, if it gave one
    foreground: bool = False  # kept only for its key: no stored output
    how: str | None = None  # how it ended, when there is no status (lost, killed)


def _line(entry: dict[str, object]) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def asdict(rec: ProcRecord | Reaped) -> dict[str, object]:
    """A record's fields (its values are plain: no deep copy as dataclasses.asdict makes)."""
    return dict(vars(rec))


class StateDir:
    """``root``'s record of one rank's processes (servers of other ranks may share ``root``)."""

    def __init__(self, root: Path, rank: int = 0) -> None:
        self.root = root
        self.log = root / ("procs.log" if rank == 0 else f"procs-rank{rank}.log")
        self.legacy = root / "procs" if rank == 0 else root / f"procs-rank{rank}"
        self._fd = -1
        self._live: dict[str, ProcRecord] | None = None  # known once read
        self._history: OrderedDict[str, Reaped] = OrderedDict()  # oldest first
        self._lines = 0
        #: Units dropped from the history (their stored output may go), until taken.
        self.evicted: list[str] = []

    def save(self, rec: ProcRecord) -> None:
        live = self._records()
        self._append({"save": asdict(rec)}, live)
        live.pop(rec.unit, None)  # a re-save moves it to the end, as on replay
        live[rec.unit] = rec

    def get(self, unit: str) -> ProcRecord | None:
        return self._records().get(unit)

    def update(self, unit: str, **changes: object) -> None:
        """Save ``unit``'s record again with ``changes`` (nothing if it has none)."""
        rec = self._records().get(unit)
        if rec is not None:
            self.save(replace(rec, **changes))  # type: ignore[arg-type]

    def remove(self, unit: str) -> None:
        live = self._records()
        if unit in live:
            self._append({"remove": unit}, live)
            del live[unit]

    def reaped(self, rec: Reaped) -> None:
        """The process of ``rec.unit`` is reaped: end its record, remember it in the history."""
        live = self._records()
        self._append({"reaped": asdict(rec)}, live)
        live.pop(rec.unit, None)
        self._remember(self._history, rec)

    def find_reaped(
        self,
        *,
        label: str | None = None,
        pid: int | None = None,
        visible: Callable[[int], bool] = lambda uid: True,
    ) -> Reaped | None:
        """The most recently reaped process with this label (or else pid), if remembered,
        among those whose requester ``visible`` lets be seen (labels are per user)."""
        self._records()
        for rec in reversed(self._history.values()):
            if rec.foreground or not visible(rec.requester_uid):
                continue
            if (label is not None and rec.label == label) or (
                label is None and pid is not None and rec.pid == pid
            ):
                return rec
        return None

    def find_key(self, uid: int, key: str) -> Reaped | None:
        """The most recently reaped process that ``uid`` started with idempotency ``key``."""
        self._records()
        for rec in reversed(self._history.values()):
            if rec.key == key and rec.requester_uid == uid:
                return rec
        return None

    def history(self) -> list[Reaped]:
        """The remembered reaped processes, oldest first."""
        self._records()
        return list(self._history.values())

    def load_all(self) -> list[ProcRecord]:
        """The live records, in the order they were saved; compacts the log."""
        live = self._replay()
        self._rewrite(live)
        self._live = live
        return list(live.values())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # --- internals ------------------------------------------------------------------------

    def _records(self) -> dict[str, ProcRecord]:
        if self._live is None:
            self.load_all()  # compacted first: never append after a torn line
        assert self._live is not None
        return self._live

    def _remember(self, history: OrderedDict[str, Reaped], rec: Reaped) -> None:
        history.pop(rec.unit, None)
        history[rec.unit] = rec
        while len(history) > HISTORY_MAX:
            unit, _ = history.popitem(last=False)
            self.evicted.append(unit)

    def _append(self, entry: dict[str, object], live: dict[str, ProcRecord]) -> None:
        if self._lines > 4 * (len(live) + len(self._history)) + _SLACK:
            self._rewrite(live)
        if self._fd < 0:
            self._open()
        os.write(self._fd, _line(entry))
        self._lines += 1

    def _open(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # removed by hand?
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.log, flags, 0o600)

    def _replay(self) -> dict[str, ProcRecord]:
        live: dict[str, ProcRecord] = {}
        history: OrderedDict[str, Reaped] = OrderedDict()
        with contextlib.suppress(FileNotFoundError):
            for raw in self.log.read_bytes().splitlines():
                try:
                    entry = json.loads(raw)
                    if "save" in entry:
                        rec = ProcRecord(**entry["save"])
                        live.pop(rec.unit, None)  # a re-save moves it to the end
                        live[rec.unit] = rec
                    elif "reaped" in entry:
                        gone = Reaped(**entry["reaped"])
                        live.pop(gone.unit, None)
                        self._remember(history, gone)
                    else:
                        live.pop(entry["remove"], None)
                except (ValueError, TypeError, KeyError):
                    continue  # torn or foreign: nothing can be done with it
        self._history = history
        if self.legacy.is_dir():
            for p in sorted(self.legacy.glob("*.json")):
                with contextlib.suppress(OSError, ValueError, TypeError):
                    rec = ProcRecord(**json.loads(p.read_text()))
                    live.setdefault(rec.unit, rec)
        return live

    def _rewrite(self, live: dict[str, ProcRecord]) -> None:
        """Replace the log by one line per live record (atomically)."""
        self.close()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.log.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as f:
            f.write(b"".join(_line({"reaped": asdict(rec)}) for rec in self._history.values()))
            f.write(b"".join(_line({"save": asdict(rec)}) for rec in live.values()))
        os.replace(tmp, self.log)
        self._lines = len(live) + len(self._history)
        if self.legacy.is_dir():  # folded into the log now
            for p in self.legacy.glob("*.json"):
                p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.legacy.rmdir()
