"""Prolog and epilog runs: one script on many ranks, with deadlines and a report.

Theory of operation
-------------------
A site runs a *prolog* on every node of a job before it starts and an
*epilog* after it ends; a node whose script fails must be drained, with a
reason an operator can act on.  :class:`Perilog` runs the script on every
selected rank at once (one :class:`~sdexec.client.fanout.RankProcess` each),
as a labelled unit (label and ``SyslogIdentifier`` ``sdexec-<phase>-<run>``,
so ``systemctl`` and ``journalctl -t`` find it), and supervises each rank
with the same timeline::

    launch --timeout--> SIGTERM --kill-timeout--> SIGKILL --kill-timeout--> unkillable

The timeout counts from the launch of the run.  Each rank ends with one
:class:`~sdexec.outcome.Outcome`: ``ok``, ``exit N``, ``signal N`` (killed
by someone else), ``timeout`` (still running at the deadline, then stopped
by SIGTERM or SIGKILL: the detail says which), ``unkillable`` (still alive
after SIGKILL; the connection is dropped, which makes the server try SIGKILL
once more), ``error`` (the script could not be started) or ``unreachable``.

The script's output (stdout and stderr, interleaved as they arrive) is
streamed back and the last 64 KiB of each rank are kept, so the report can
quote the last lines of a failing rank.  (When background output goes to
the journal, the same lines are in ``journalctl -t <label>``.)

:class:`Report` is the result: every rank's outcome, elapsed time and last
lines, and the ranks to drain with a one-line reason each (``node3: prolog
timeout: still running after 30s, stopped by SIGTERM``).
:meth:`Report.to_json` is the machine-readable form printed by ``--json``.

Ownership: :meth:`Perilog.run` owns one TaskGroup with a supervisor task per
rank (which owns that rank's run task) and the optional progress task.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from sdexec.client.exec import FLAG_STDERR, FLAG_STDOUT, build_command
from sdexec.client.fanout import DEFAULT_CONNECT_TIMEOUT, RankProcess
from sdexec.errors import SdexecError
from sdexec.hosts import Host
from sdexec.outcome import Kind, Outcome, signal_name, summary

PHASES = ("prolog", "epilog")
TAIL_BYTES = 64 * 1024
DEFAULT_TAIL_LINES = 10
RANK_ENV = "SDEXEC_RANK"
PHASE_ENV = "SDEXEC_PERILOG_PHASE"


class Tail:
    """The last :data:`TAIL_BYTES` of a stream of output, and its last lines."""

    __slots__ = ("_buf", "total")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self._buf += data
        if len(self._buf) > TAIL_BYTES:
            del self._buf[: len(self._buf) - TAIL_BYTES]

    def lines(self, n: int) -> list[str]:
        """The last ``n`` lines (decoded as UTF-8, bad bytes replaced)."""
        if n <= 0:
            return []
        text = self._buf.decode("utf-8", "replace")
        return text.splitlines()[-n:]


class RankRun:
    """One rank of a run: its process, its output and what supervision did."""

    def __init__(self, proc: RankProcess) -> None:
        self.proc = proc
        self.tail = Tail()
        self.timed_out = False
        self.signals_sent: list[int] = []
        self.unkillable = False
        self.elapsed: float | None = None
        self.outcome: Outcome | None = None

    @property
    def host(self) -> Host:
        return self.proc.host

    @property
    def state(self) -> str:
        """connecting, running, or the outcome's kind once ended."""
        if self.outcome is not None:
            return self.outcome.kind.value
        return "running" if self.proc.started.is_set() else "connecting"


def classify(run: RankRun, timeout: float | None, kill_timeout: float) -> Outcome:
    """The outcome of a rank from its process's outcome and the supervision."""
    base = run.proc.outcome or Outcome(Kind.ERROR, errno.EIO, "no outcome")
    if run.unkillable:
        return Outcome(
            Kind.UNKILLABLE,
            signal.SIGKILL,
            f"still running {kill_timeout:g}s after SIGKILL",
        )
    if not run.timed_out:
        return base
    what = f"still running after {timeout:g}s"
    if not run.signals_sent:
        return Outcome(Kind.TIMEOUT, 0, f"{what}, before it started")
    if base.kind is Kind.UNREACHABLE:
        return Outcome(Kind.TIMEOUT, 0, f"{what}; then {base.detail}")
    if signal.SIGKILL in run.signals_sent:
        how = f"ignored SIGTERM for {kill_timeout:g}s, killed by SIGKILL"
        return Outcome(Kind.TIMEOUT, signal.SIGKILL, f"{what}, {how}")
    ended = base.code if base.kind is Kind.SIGNAL else signal.SIGTERM
    return Outcome(Kind.TIMEOUT, ended, f"{what}, stopped by {signal_name(signal.SIGTERM)}")


class RankReport:
    """One rank's line of the report."""

    __slots__ = ("elapsed", "host", "outcome", "tail")

    def __init__(self, host: Host, outcome: Outcome, elapsed: float | None, tail: list[str]):
        self.host = host
        self.outcome = outcome
        self.elapsed = elapsed
        self.tail = tail


class Report:
    """The result of a run: each rank's outcome, and the ranks to drain."""

    def __init__(self, phase: str, label: str, ranks: list[RankReport], elapsed: float) -> None:
        self.phase = phase
        self.label = label
        self.ranks = ranks
        self.elapsed = elapsed

    @property
    def ok(self) -> bool:
        return all(r.outcome.ok for r in self.ranks)

    @property
    def failed(self) -> list[RankReport]:
        return [r for r in self.ranks if not r.outcome.ok]

    def reason(self, r: RankReport) -> str:
        """The drain reason: ``prolog timeout: still running after 30s, ...``."""
        text = f"{self.phase} {r.outcome.label}"
        if r.outcome.detail and r.outcome.kind is not Kind.ERROR:
            text += f": {r.outcome.detail}"
        return text

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.ranks:
            out[r.outcome.kind.value] = out.get(r.outcome.kind.value, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (``--json``)."""

        def rank(r: RankReport) -> dict[str, Any]:
            return {
                "rank": r.host.rank,
                "host": r.host.name,
                "uri": r.host.uri,
                "outcome": r.outcome.kind.value,
                "code": r.outcome.code,
                "status": r.outcome.label,
                "detail": r.outcome.detail,
                "exit_code": r.outcome.exit_code(),
                "elapsed": None if r.elapsed is None else round(r.elapsed, 3),
                "output": r.tail,
            }

        return {
            "phase": self.phase,
            "label": self.label,
            "ok": self.ok,
            "elapsed": round(self.elapsed, 3),
            "counts": self.counts(),
            "summary": summary({r.host.rank: r.outcome for r in self.ranks}),
            "ranks": [rank(r) for r in self.ranks],
            "drain": [
                {
                    "rank": r.host.rank,
                    "host": r.host.name,
                    "phase": self.phase,
                    "outcome": r.outcome.kind.value,
                    "reason": self.reason(r),
                    "output": r.tail,
                }
                for r in self.failed
            ],
        }

    def render(self) -> str:
        """The report for people: a summary, then each node to drain and why."""
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts().items()))
        lines = [f"{self.phase}: {len(self.ranks)} ranks in {self.elapsed:.1f}s: {counts}"]
        lines += [f"  {line}" for line in summary({r.host.rank: r.outcome for r in self.ranks})]
        if self.failed:
            lines.append("drain:")
            for r in self.failed:
                lines.append(f"  {r.host.name} (rank {r.host.rank}): {self.reason(r)}")
                lines += [f"    | {line}" for line in r.tail]
        return "".join(line + "\n" for line in lines)


class Perilog:
    """One prolog or epilog run over ``hosts`` (see the module docstring)."""

    def __init__(
        self,
        hosts: Sequence[Host],
        phase: str,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        kill_timeout: float = 10.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        tail_lines: int = DEFAULT_TAIL_LINES,
        env: dict[str, str] | None = None,
        cwd: str | None = "/",
        label: str | None = None,
        on_change: Callable[[Perilog], None] | None = None,
    ) -> None:
        if phase not in PHASES:
            raise SdexecError(errno.EINVAL, f"phase must be prolog or epilog, not {phase!r}")
        self.phase = phase
        self.timeout = timeout
        self.kill_timeout = kill_timeout
        self.connect_timeout = connect_timeout
        self.tail_lines = tail_lines
        self.label = label or f"sdexec-{phase}-{int(time.time())}-{os.getpid()}"
        self.on_change = on_change
        self.started_at = time.monotonic()
        base_env = dict(os.environ if env is None else env)
        self.runs: list[RankRun] = []
        for host in hosts:
            command = build_command(
                argv,
                env={**base_env, RANK_ENV: str(host.rank), PHASE_ENV: phase},
                cwd=cwd,
                opts={"SDEXEC_PROP_SyslogIdentifier": self.label},
                label=self.label,
            )
            proc = RankProcess(
                host,
                command,
                flags=FLAG_STDOUT | FLAG_STDERR,
                stdin=False,
                on_output=self._output,
                on_change=self._changed,
            )
            self.runs.append(RankRun(proc))
        self._by_proc = {id(r.proc): r for r in self.runs}

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def counts(self) -> dict[str, int]:
        """How many ranks are in each state (connecting, running, ok, ...)."""
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.state] = out.get(r.state, 0) + 1
        return out

    def _output(self, proc: RankProcess, stream: str, data: bytes, eof: bool) -> None:
        self._by_proc[id(proc)].tail.feed(data)

    def _changed(self, proc: RankProcess) -> None:
        if self.on_change is not None:
            self.on_change(self)

    async def run(self) -> Report:
        """Run on every rank, supervise, and return the report."""
        self.started_at = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for r in self.runs:
                tg.create_task(self._supervise(r))
        ranks = [
            RankReport(
                r.host,
                r.outcome or Outcome(Kind.ERROR, errno.EIO),
                r.elapsed,
                r.tail.lines(self.tail_lines),
            )
            for r in self.runs
        ]
        return Report(self.phase, self.label, ranks, self.elapsed())

    async def _supervise(self, r: RankRun) -> None:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(r.proc.run(self.connect_timeout))
            if self.timeout is not None:
                await self._deadlines(r, task)
        r.elapsed = self.elapsed()
        r.outcome = classify(r, self.timeout, self.kill_timeout)
        self._changed(r.proc)

    async def _deadlines(self, r: RankRun, task: asyncio.Task[Outcome]) -> None:
        assert self.timeout is not None
        if await _ended(task, self.timeout - self.elapsed()):
            return
        r.timed_out = True
        if not r.proc.running:  # still connecting or starting: give up on it
            await r.proc.abandon(SdexecError(errno.ETIMEDOUT, "timed out before it started"))
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if await r.proc.kill(signum, within=self.kill_timeout):
                r.signals_sent.append(signum)
            if await _ended(task, self.kill_timeout):
                return
        r.unkillable = True
        await r.proc.abandon(SdexecError(errno.ETIMEDOUT, "unkillable"))


async def _ended(task: asyncio.Task[Outcome], delay: float) -> bool:
    """Wait up to ``delay`` seconds for ``task``; True if it has ended."""
    if not task.done():
        await asyncio.wait([task], timeout=max(delay, 0))
    return task.done()
