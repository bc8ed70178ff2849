"""``sdexec top``: a live, full-screen view of the units of one rank or many.

Theory of operation
-------------------
Each refresh sends one ``sdexec.list`` with ``{"stats": true}`` to every
selected server (all requests first, then the answers), over connections
opened once.  The server reads each unit's cgroup
(:mod:`sdexec.server.stats`): CPU time, memory, start time, and its own
clock.  CPU% is the CPU time a unit used between two refreshes over the
server-clock time between them (100% = one CPU); on the first screen, and
in the one-shot table, it is the average over the unit's life, as ``ps``
shows it.

The screen is drawn with :mod:`curses` from the standard library (ncurses:
terminfo, resizing, no escape codes written here).  A stdout that is not a
terminal gets one table instead, and ``--json`` the samples as JSON.  The
parts that turn samples into rows and rows into text are plain functions,
tested without a terminal.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field

from sdexec.base.errors import SdexecError
from sdexec.cli.common import EXIT_FAILURE, connect, error
from sdexec.cli.signing import sign_options
from sdexec.client.exec import LIST_TOPIC
from sdexec.client.rpc import response_payload
from sdexec.cluster.outcome import EXIT_NOHOST

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

    from sdexec.client.blocking import BlockingHandle

SORTS = {"c": "cpu", "m": "memory", "e": "elapsed", "l": "label", "p": "pid", "r": "rank"}
KEYS_LINE = "q quit  c cpu  m memory  e elapsed  l label  p pid  r rank"


@dataclass
class Row:
    """One unit in one sample."""

    rank: int
    pid: int
    label: str
    unit: str
    state: str
    cmd: str
    cpu_pct: float | None = None
    memory: int | None = None
    memory_source: str | None = None
    elapsed: float | None = None
    pty: bool = False

    def key(self) -> tuple[int, str]:
        return self.rank, self.unit


@dataclass
class Sample:
    """What every selected server answered at one refresh."""

    rows: list[Row] = field(default_factory=list)
    unreachable: dict[int, str] = field(default_factory=dict)  # rank: why
    memory_sources: dict[int, set[str]] = field(default_factory=dict)  # rank: cgroup/rss


class Rates:
    """CPU% between refreshes, from each unit's CPU time and the server's clock."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, str], tuple[int, float]] = {}

    def cpu_pct(self, key: tuple[int, str], cpu_usec: int, now: float, started: float) -> float:
        last = self._last.get(key)
        self._last[key] = (cpu_usec, now)
        if last is not None and now > last[1] and cpu_usec >= last[0]:
            return (cpu_usec - last[0]) / 1e4 / (now - last[1])
        life = now - started
        return cpu_usec / 1e4 / life if life > 0 else 0.0


def state_text(proc: dict[str, Any]) -> str:
    """A process's state as ps and top show it: ``Z (oom-kill)`` when the server says why."""
    state = str(proc.get("state") or "-")
    reason = proc.get("reason")
    return f"{state} ({reason})" if isinstance(reason, str) and reason else state


def rows_of(resp: dict[str, Any], rates: Rates, sample: Sample) -> None:
    """Add one server's ``sdexec.list`` (with stats) to ``sample``."""
    rank = resp.get("rank", 0)
    rank = rank if isinstance(rank, int) else 0
    now = resp.get("time")
    now = float(now) if isinstance(now, (int, float)) else time.time()
    for proc in resp.get("procs") or []:
        if not isinstance(proc, dict):
            continue
        row = Row(
            rank=rank,
            pid=int(proc.get("pid") or 0),
            label=str(proc.get("label") or "-"),
            unit=str(proc.get("unit") or "-"),
            state=state_text(proc),
            cmd=str(proc.get("cmd") or ""),
            pty=proc.get("pty") is True,
        )
        started = proc.get("started")
        if isinstance(started, (int, float)):
            row.elapsed = max(0.0, now - started)
            cpu = proc.get("cpu_usec")
            if isinstance(cpu, int):
                row.cpu_pct = rates.cpu_pct(row.key(), cpu, now, float(started))
        memory = proc.get("memory")
        if isinstance(memory, int):
            row.memory = memory
            row.memory_source = str(proc.get("memory_source") or "")
            sample.memory_sources.setdefault(rank, set()).add(row.memory_source)
        sample.rows.append(row)


def sort_rows(rows: list[Row], by: str) -> list[Row]:
    """Biggest first for numbers (CPU%, memory, elapsed), ascending for the rest."""
    if by == "cpu":
        return sorted(rows, key=lambda r: (-(r.cpu_pct or 0.0), r.key()))
    if by == "memory":
        return sorted(rows, key=lambda r: (-(r.memory or 0), r.key()))
    if by == "elapsed":
        return sorted(rows, key=lambda r: (-(r.elapsed or 0.0), r.key()))
    if by == "label":
        return sorted(rows, key=lambda r: (r.label, r.key()))
    if by == "pid":
        return sorted(rows, key=lambda r: (r.rank, r.pid))
    return sorted(rows, key=lambda r: (r.rank, r.label, r.pid))


def human_size(n: int | None) -> str:
    """Bytes as 512B, 1.5K, 20.0M, 3.2G (powers of 1024)."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in ("K", "M", "G", "T"):
        value /= 1024
        if value < 1024 or unit == "T":
            break
    return f"{value:.1f}{unit}"


def elapsed_text(seconds: float | None) -> str:
    """As ``ps -o etime``: [[DD-]HH:]MM:SS."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}-{hours:02}:{minutes:02}:{s:02}"
    if hours:
        return f"{hours:02}:{minutes:02}:{s:02}"
    return f"{minutes:02}:{s:02}"


def table(rows: Sequence[Row], *, with_rank: bool) -> list[str]:
    """The header and one line per row, columns as wide as their values."""
    cells = [
        [
            *([str(r.rank)] if with_rank else []),
            str(r.pid),
            r.label,
            r.unit,
            r.state,
            "-" if r.cpu_pct is None else f"{r.cpu_pct:.1f}",
            human_size(r.memory),
            elapsed_text(r.elapsed),
            r.cmd + (" (pty)" if r.pty else ""),
        ]
        for r in rows
    ]
    head = [*(["RANK"] if with_rank else []), "PID", "LABEL", "UNIT", "S", "CPU%", "MEM"]
    head += ["ELAPSED", "CMD"]
    right = {"RANK", "PID", "CPU%", "MEM", "ELAPSED"}
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]

    def line(values: list[str]) -> str:
        parts = []
        for i, (h, v) in enumerate(zip(head, values, strict=True)):
            last = i == len(head) - 1
            parts.append(v.rjust(widths[i]) if h in right else v if last else v.ljust(widths[i]))
        return " ".join(parts).rstrip()

    return [line(head), *(line(c) for c in cells)]


def notes(sample: Sample) -> list[str]:
    """What the reader must know to read the numbers: unreachable ranks, RSS memory."""
    out = []
    rss = sorted(rank for rank, kinds in sample.memory_sources.items() if "rss" in kinds)
    if rss:
        where = "rank " + ",".join(map(str, rss))
        out.append(
            f"MEM on {where}: resident set of the unit's processes "
            "(no memory controller for its cgroups)"
        )
    for rank, why in sorted(sample.unreachable.items()):
        out.append(f"rank {rank}: {why}")
    return out


# --- the servers ---------------------------------------------------------------------


class Servers:
    """One connection per selected rank, opened once; a failed rank is reported, not fatal."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.many = bool(args.ranks or args.exclude)
        targets: list[tuple[int, str | None, int | None]]
        if self.many:
            # The hosts file, or inside Flux the instance's ranks (by nodeid).
            from sdexec.cluster.ranks import instance

            hosts = instance(args.hosts).select(args.ranks, args.exclude)
            targets = [(h.rank, h.uri, h.nodeid) for h in hosts]
        else:
            targets = [(0, args.uri, None)]
        self.handles: dict[int, BlockingHandle] = {}
        self.down: dict[int, str] = {}
        sign = sign_options(args)
        for rank, uri, nodeid in targets:
            try:
                self.handles[rank] = connect(uri, sign)
                if nodeid is not None:
                    self.handles[rank].nodeid = nodeid
            except SdexecError as exc:
                if not self.many:
                    raise
                self.down[rank] = f"unreachable: {exc.message}"

    def sample(self, rates: Rates) -> Sample:
        out = Sample(unreachable=dict(self.down))
        tags = {}
        for rank, handle in list(self.handles.items()):
            tags[rank] = handle.request(LIST_TOPIC, {"stats": True})
        for rank, tag in tags.items():
            handle = self.handles[rank]
            try:
                resp = _answer(handle, tag)
            except SdexecError as exc:
                if not self.many:
                    raise
                out.unreachable[rank] = exc.message
                self.down[rank] = f"lost: {exc.message}"
                del self.handles[rank]
                handle.close()
                continue
            rows_of(resp, rates, out)
        return out

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def _answer(handle: BlockingHandle, tag: int) -> dict[str, Any]:
    while True:
        for msg in handle.receive():
            if msg.matchtag == tag:
                return response_payload(msg)


# --- the command ---------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run ``sdexec top``; returns the exit status."""
    try:
        servers = Servers(args)
    except SdexecError as exc:
        error(f"top: {exc.message}")
        return EXIT_FAILURE
    try:
        if args.json or not sys.stdout.isatty() or args.once:
            return _once(servers, args)
        import curses

        return int(curses.wrapper(_screen, servers, args))
    except SdexecError as exc:
        error(f"top: {exc.message}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 0
    finally:
        servers.close()


def _once(servers: Servers, args: argparse.Namespace) -> int:
    sample = servers.sample(Rates())
    rows = sort_rows(sample.rows, args.sort)
    if args.json:
        print(
            json.dumps(
                {
                    "procs": [r.__dict__ for r in rows],
                    "unreachable": {str(k): v for k, v in sample.unreachable.items()},
                }
            ),
            flush=True,
        )
    else:
        text = "\n".join(table(rows, with_rank=servers.many)) + "\n"
        sys.stdout.write(text)
        sys.stdout.flush()
        for note in notes(sample):
            error(f"top: {note}")
    if not sample.unreachable:
        return 0
    return EXIT_NOHOST if servers.many else EXIT_FAILURE  # docs/reference/exit-status.md


def _screen(stdscr: Any, servers: Servers, args: argparse.Namespace) -> int:
    import curses

    curses.curs_set(0)
    stdscr.timeout(int(args.delay * 1000))
    rates = Rates()
    sort = args.sort
    while True:
        sample = servers.sample(rates)
        _draw(stdscr, sample, sort, servers.many, args.delay, curses)
        while True:  # wait for a key or the next refresh
            key = stdscr.getch()
            if key == -1:
                break
            ch = chr(key) if 0 <= key < 256 else ""
            if ch in ("q", "Q"):
                return 0
            if ch in SORTS:
                sort = SORTS[ch]
                _draw(stdscr, sample, sort, servers.many, args.delay, curses)
            elif key == curses.KEY_RESIZE:
                _draw(stdscr, sample, sort, servers.many, args.delay, curses)


def _draw(stdscr: Any, sample: Sample, sort: str, many: bool, delay: float, curses: Any) -> None:
    rows = sort_rows(sample.rows, sort)
    height, width = stdscr.getmaxyx()
    stdscr.erase()
    ranks = len({r.rank for r in rows} | set(sample.unreachable))
    title = (
        f"sdexec top - {time.strftime('%H:%M:%S')} - {len(rows)} units on "
        f"{ranks or 1} rank{'s' if ranks > 1 else ''} - every {delay:g}s, by {sort}"
    )
    lines = table(rows, with_rank=many)

    def put(y: int, text: str, attr: int) -> None:
        _put(stdscr, y, text, width, attr, curses)

    put(0, title, curses.A_BOLD)
    y = 1
    for note in notes(sample):
        if y < height - 2:
            put(y, note, 0)
            y += 1
    y += 1
    if y < height - 1:
        put(y, lines[0].ljust(width), curses.A_REVERSE)
    for line in lines[1:]:
        y += 1
        if y >= height - 1:
            break
        put(y, line, 0)
    put(height - 1, KEYS_LINE, curses.A_DIM)
    stdscr.refresh()


def _put(stdscr: Any, y: int, text: str, width: int, attr: int, curses: Any) -> None:
    with contextlib.suppress(curses.error):  # a screen too small for the line
        stdscr.addnstr(y, 0, text, max(0, width - 1), attr)


def add_parser(sub: Any, parents: list[Any], fmt: Any) -> Any:
    """The ``top`` subcommand's options."""
    p = sub.add_parser(
        "top",
        parents=parents,
        help="a live view of the units: CPU, memory, elapsed time",
        description=(
            "Show the server's units, refreshed: label, unit, state, CPU% and memory "
            "from each unit's cgroup, elapsed time and command. On a terminal the "
            "view is full-screen (q quits; c, m, e, l, p, r sort by CPU, memory, "
            "elapsed time, label, pid, rank); otherwise one table is printed."
        ),
        formatter_class=fmt,
    )
    p.add_argument(
        "-d", "--delay", type=_delay, default=2.0, metavar="SECONDS", help="refresh interval"
    )
    p.add_argument(
        "-s",
        "--sort",
        choices=sorted(set(SORTS.values())),
        default="cpu",
        help="sort order (default: cpu)",
    )
    p.add_argument("--once", action="store_true", help="print one table, even on a terminal")
    p.add_argument("--json", action="store_true", help="print one sample as JSON")
    return p


def _delay(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"invalid delay {text!r} (0.1 to 3600 seconds)")
    return value
