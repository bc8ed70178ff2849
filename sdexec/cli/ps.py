"""``sdexec ps``: list the server's processes (``sdexec.list``), like ``flux sproc ps``.

The default output is a table whose columns are as wide as their widest
value: PID LABEL STATE START ELAPSED CMD, and with ``-l`` also WAITABLE
and UNIT, what ``systemctl list-units`` users look for.  ``-o FORMAT``
formats each process with :meth:`str.format` (:data:`FIELDS`) under a
header made from the same format.  ``--stats`` (or a format that names cpu
or mem) asks the server for each unit's cgroup figures, as ``sdexec top``
does: CPU% is the average over the unit's life, as in ps(1).
"""

from __future__ import annotations

import json
import re
import string
import time

from sdexec.base.errors import SdexecError
from sdexec.cli.common import EXIT_FAILURE, connect, error
from sdexec.cli.signing import sign_options
from sdexec.client.exec import LIST_TOPIC

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable
    from typing import Any

FIELDS = (
    "pid", "label", "state", "cmd", "rank", "host", "start", "elapsed", "waitable", "unit",
    "cpu", "mem",
)  # fmt: skip
STATS_FIELDS = ("cpu", "mem")
# A format spec: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_SPEC = re.compile(
    r"(?:(?P<fill>.)?(?P<align>[<>=^]))?[-+ ]?z?#?(?P<zero>0)?(?P<width>\d+)?[,_]?(?:\.\d+)?"
    r"(?P<type>[a-zA-Z%])?"
)


def wants_stats(args: argparse.Namespace) -> bool:
    """``--stats``, or a format naming a stats field."""
    return bool(args.stats) or any(f"{{{f}" in (args.format or "") for f in STATS_FIELDS)


def list_payload(args: argparse.Namespace) -> dict[str, Any]:
    return {"details": True, "stats": True} if wants_stats(args) else {"details": True}


def rows(resp: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict of FIELDS per process of a ``sdexec.list`` response."""
    from sdexec.cli.top import Rates, Sample, elapsed_text, human_size, rows_of, state_text

    rank = resp.get("rank", 0)
    now = _number(resp, "time") or time.time()
    out = []
    for proc in resp.get("procs") or []:
        if not isinstance(proc, dict):
            continue
        label = proc.get("label")
        started, ended = _number(proc, "started"), _number(proc, "ended")
        out.append(
            {
                "pid": proc.get("pid", "-"),
                "label": label if label else "-",
                "state": state_text(proc),
                "cmd": proc.get("cmd", ""),
                "rank": rank,
                "host": resp.get("host", "-"),
                "start": start_text(started),
                "elapsed": elapsed_text(None if started is None else (ended or now) - started),
                "waitable": _yes_no(proc.get("waitable")),
                "unit": proc.get("unit") or "-",
                "cpu": "-",
                "mem": "-",
            }
        )
    if "time" in resp:  # with stats: figures as sdexec top shows them (lifetime CPU%)
        sample = Sample()
        rows_of(resp, Rates(), sample)
        for entry, row in zip(out, sample.rows, strict=True):
            entry["cpu"] = "-" if row.cpu_pct is None else f"{row.cpu_pct:.1f}"
            entry["mem"] = human_size(row.memory)
            if entry["elapsed"] == "-":  # else known from started/ended (a Z's stops)
                entry["elapsed"] = elapsed_text(row.elapsed)
    return out


def _number(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _yes_no(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else "-"


def start_text(started: float | None) -> str:
    """As ps(1) STIME: the time of day if it started today, else the date."""
    if started is None:
        return "-"
    then = time.localtime(started)
    if time.strftime("%Y%m%d", then) == time.strftime("%Y%m%d"):
        return time.strftime("%H:%M:%S", then)
    return time.strftime("%b%d", then)


def _column(procs: list[dict[str, Any]], name: str, align: str = "<") -> str:
    width = max([len(name)] + [len(str(p[name])) for p in procs])
    return f"{{{name}:{align}{width}}} "


def default_format(procs: Iterable[dict[str, Any]], stats: bool = False, long: bool = False) -> str:
    """A table format whose columns fit the values (CPU, MEM with ``stats``; WAITABLE,
    UNIT with ``long``)."""
    procs = list(procs)
    pid_w = max([3] + [len(str(p["pid"])) for p in procs])
    columns = f"{{pid:>{pid_w}}} " + _column(procs, "label") + _column(procs, "state")
    columns += _column(procs, "start") + _column(procs, "elapsed", ">")
    columns += stats_format(procs, stats)
    if long:
        columns += _column(procs, "waitable") + _column(procs, "unit")
    return columns + "{cmd}"


def stats_format(procs: Iterable[dict[str, Any]], stats: bool) -> str:
    """The CPU, MEM and ELAPSED columns of the default table (empty without ``stats``)."""
    if not stats:
        return ""
    procs = list(procs)
    widths = [max([len(name)] + [len(str(p[name])) for p in procs]) for name in STATS_FIELDS]
    return "".join(f"{{{name}:>{w}}} " for name, w in zip(STATS_FIELDS, widths, strict=True))


def header(fmt: str) -> str:
    """The header line for a format: each field replaced by its upper-case name.

    Only the alignment and width of each field's spec are kept (a numeric
    field without an alignment is right-aligned, as its values are).
    """
    out = []
    for literal, field, spec, _conv in string.Formatter().parse(fmt):
        out.append(literal)
        if field is None:
            continue
        name = field.upper()
        m = _SPEC.fullmatch(spec or "")
        if m is None:
            out.append(name)
            continue
        align = m["align"] or ""
        if align in ("", "=") and (m["zero"] or (m["type"] and m["type"] not in "sc")):
            align = ">"
        fill = (m["fill"] or "") if align == m["align"] else ""
        out.append(format(name, f"{fill}{align}{m['width'] or ''}"))
    return "".join(out).rstrip()


def render(
    resp: dict[str, Any],
    fmt: str | None = None,
    *,
    with_header: bool = True,
    stats: bool = False,
    long: bool = False,
) -> str:
    """The text ``sdexec ps`` prints for a ``sdexec.list`` response.

    Raises KeyError/ValueError/IndexError for a bad ``fmt``.
    """
    procs = rows(resp)
    if fmt is None:
        fmt = default_format(procs, stats, long)
    lines = [header(fmt)] if with_header else []
    lines.extend(fmt.format(**p).rstrip() for p in procs)
    return "".join(line + "\n" for line in lines)


def run(args: argparse.Namespace) -> int:
    """Run ``sdexec ps``; returns the exit status."""
    try:
        with connect(args.uri, sign_options(args)) as handle:
            resp = handle.rpc(LIST_TOPIC, list_payload(args))
    except SdexecError as exc:
        error(f"ps: {exc.message}")
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(resp), flush=True)
        return 0
    try:
        text = render(
            resp,
            args.format,
            with_header=not args.no_header,
            stats=args.stats,
            long=getattr(args, "long", False),
        )
    except KeyError as exc:
        error(f"ps: unknown field {exc} in format (fields: {', '.join(FIELDS)})")
        return EXIT_FAILURE
    except (ValueError, IndexError) as exc:
        error(f"ps: bad format: {exc}")
        return EXIT_FAILURE
    print(text, end="", flush=True)
    return 0
