"""``sdexec perilog run``: a prolog or epilog on many ranks, with a drain report.

The parser is defined here (imported by :mod:`sdexec.cli.main` at start-up,
so it costs only argparse); :func:`run` imports the asyncio machinery of
:mod:`sdexec.cluster.perilog` when the command actually runs.

On a terminal (stderr), progress is shown live on one line: the count of
ranks in each state and the elapsed time.  At the end the report goes to
stdout, as text or, with ``--json``, as one JSON object.  The exit status is
0 when every rank was ok, 1 when some rank was not, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sdexec.cluster.perilog import Perilog

EXIT_NOT_OK = 1
EXIT_USAGE = 2
PROGRESS_INTERVAL = 0.2

_DESCRIPTION = """\
Run SCRIPT as a systemd unit on every selected rank of the hosts file at
once, and report which nodes to drain and why.

At --timeout seconds after the start, a rank's script that is still running
gets SIGTERM; --kill-timeout seconds later, SIGKILL; and if it is still
alive --kill-timeout seconds after that, it is "unkillable". Each rank ends
as one of: ok, exit N, signal N, timeout, unkillable, error (the script
could not be started) or unreachable (no server, or the connection was
lost). The script gets SDEXEC_RANK and SDEXEC_PERILOG_PHASE in its
environment and runs in /, as a background unit labelled
sdexec-PHASE-TIME-PID. Its output is kept by the server where background
output goes (the node's journal, with the label as SYSLOG_IDENTIFIER, so
"sdexec logs -r RANK LABEL" prints it later, as "journalctl -t LABEL" does on
the node with a systemd journal); the report quotes the last lines of each
failing rank.
"""

_EPILOG = """\
exit status:
  0  every rank was ok
  1  some rank was not ok: the report names the nodes to drain
  2  usage error (bad arguments, no hosts file), or this node's set-up is
     wrong (no CURVE key for tcp://, no ssh): nothing was run

examples:
  sdexec perilog run --phase prolog -r all --timeout 30 -- /etc/sdexec/prolog
  sdexec perilog run --phase epilog -r 0-15 -x 7 --json -- /etc/sdexec/epilog
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def add_parser(
    sub: Any, parents: list[argparse.ArgumentParser], fmt: type[argparse.HelpFormatter]
) -> dict[str, argparse.ArgumentParser]:
    """Add ``perilog`` (and ``perilog run``) to the subcommands ``sub``."""
    p = sub.add_parser(
        "perilog",
        help="run prolog and epilog scripts on many ranks",
        description="Run prolog and epilog scripts on many ranks at once.",
        formatter_class=fmt,
    )
    psub = p.add_subparsers(dest="perilog_command", metavar="COMMAND", required=True)
    r = psub.add_parser(
        "run",
        parents=parents,
        help="run a prolog or epilog script on every selected rank",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=fmt,
        usage="%(prog)s --phase prolog|epilog [options] [--] SCRIPT [ARG...]",
    )
    r.add_argument("--phase", required=True, choices=("prolog", "epilog"), help="the phase")
    r.add_argument(
        "--timeout",
        metavar="SEC",
        type=_seconds,
        default=None,
        help="send SIGTERM to a script still running after SEC seconds (default: none)",
    )
    r.add_argument(
        "--kill-timeout",
        metavar="SEC",
        type=_seconds,
        default=10.0,
        help="send SIGKILL SEC seconds after SIGTERM (default: 10)",
    )
    r.add_argument(
        "--connect-timeout",
        metavar="SEC",
        type=_seconds,
        default=10.0,
        help="a server that does not answer in SEC seconds is unreachable (default: 10)",
    )
    r.add_argument(
        "--lines",
        metavar="N",
        type=int,
        default=10,
        help="quote the last N lines of output of each failing rank (default: 10)",
    )
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show live progress on stderr (default: when stderr is a terminal)",
    )
    r.add_argument(
        "cmdline",
        nargs=argparse.REMAINDER,
        metavar="SCRIPT [ARG...]",
        help="the script to run on every rank, and its arguments",
    )
    return {"perilog": p, "perilog run": r}


class _Progress:
    """One line on stderr, rewritten in place: counts per state and elapsed time."""

    def __init__(self, perilog: Perilog) -> None:
        self.perilog = perilog
        self.shown = False

    def line(self) -> str:
        counts = self.perilog.counts()
        order = ("connecting", "running", "ok", "exit", "signal", "timeout", "unkillable")
        parts = [f"{counts.pop(k)} {k}" for k in order if k in counts]
        parts += [f"{n} {k}" for k, n in sorted(counts.items())]
        return f"{self.perilog.phase}: {', '.join(parts)}  [{self.perilog.elapsed():.1f}s]"

    def show(self) -> None:
        os.write(2, f"\r\x1b[K{self.line()}".encode())
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            os.write(2, b"\r\x1b[K")


async def _run(args: argparse.Namespace, perilog: Perilog, progress: _Progress | None) -> Any:
    import asyncio

    if progress is None:
        return await perilog.run()

    async def tick() -> None:
        while True:
            progress.show()
            await asyncio.sleep(PROGRESS_INTERVAL)

    async with asyncio.TaskGroup() as tg:
        ticker = tg.create_task(tick())
        try:
            return await perilog.run()
        finally:
            ticker.cancel()
            progress.clear()


def run(args: argparse.Namespace) -> int:
    """Run ``sdexec perilog run``; returns the exit status."""
    import asyncio
    import json
    import shlex

    from sdexec.base.errors import SdexecError
    from sdexec.cli.common import error
    from sdexec.cluster.perilog import Perilog, check_setup
    from sdexec.cluster.ranks import instance

    if args.perilog_command != "run":
        error(f"perilog: unknown command {args.perilog_command!r}")
        return EXIT_USAGE
    cmdline = list(args.cmdline)
    if cmdline[:1] == ["--"]:
        del cmdline[0]
    if not cmdline:
        error("perilog run: a SCRIPT is required")
        return EXIT_USAGE
    try:
        hosts = instance(args.hosts).select(args.ranks or "all", args.exclude)
        check_setup(hosts)
        perilog = Perilog(
            hosts,
            args.phase,
            cmdline,
            timeout=args.timeout,
            kill_timeout=args.kill_timeout,
            connect_timeout=args.connect_timeout,
            tail_lines=args.lines,
            logs_options=f" --hosts {shlex.quote(args.hosts)}" if args.hosts else "",
        )
    except SdexecError as exc:
        error(f"perilog run: {exc.message}")
        return EXIT_USAGE
    show = args.progress if args.progress is not None else (not args.json and sys.stderr.isatty())
    progress = _Progress(perilog) if show else None
    try:
        report = asyncio.run(_run(args, perilog, progress))
    except KeyboardInterrupt:
        error("perilog run: interrupted; the servers stop the scripts")
        return 130
    if args.json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(report.render())
    sys.stdout.flush()
    return 0 if report.ok else EXIT_NOT_OK
