"""The result of a prolog or epilog run: outcomes, drain reasons, output tails.

Theory of operation
-------------------
Sans-IO half of :mod:`sdexec.cluster.perilog`.  :func:`classify` turns what
happened to a rank (how its run ended, and whether the deadline passed and
which signals were then sent) into one :class:`~sdexec.cluster.outcome.Outcome`.
:class:`Tail` keeps the end of a rank's output.  :class:`Report` holds every
rank's outcome, elapsed time and last lines, names the ranks to drain with a
one-line reason each (``prolog timeout: still running after 30s, stopped by
SIGTERM``), and renders itself as text or as the JSON object of ``sdexec
perilog run --json``.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Sequence
from typing import Any

from sdexec.cluster.hosts import Host
from sdexec.cluster.outcome import Kind, Outcome, signal_name, summary

TAIL_BYTES = 64 * 1024


class Tail:
    """The last :data:`TAIL_BYTES` of a stream of output, and its last lines."""

    __slots__ = ("_buf", "total")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.total = 0

    def replace(self, data: bytes) -> None:
        """Start again from ``data`` (a later, more complete read of the end)."""
        self._buf.clear()
        self.feed(data)

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


def classify(
    base: Outcome | None,
    *,
    timed_out: bool,
    signals_sent: Sequence[int],
    unkillable: bool,
    timeout: float | None,
    kill_timeout: float,
    unresponsive: str | None = None,
) -> Outcome:
    """A rank's outcome from its run's outcome (``base``) and what supervision did.

    ``timed_out``: the script was still running at the deadline;
    ``signals_sent``: the signals the server then delivered (SIGTERM, SIGKILL);
    ``unkillable``: it was still running ``kill_timeout`` after SIGKILL;
    ``unresponsive``: the server stopped answering (what it did not answer).
    """
    base = base or Outcome(Kind.ERROR, errno.EIO, "no outcome")
    if unresponsive is not None:
        return Outcome(Kind.UNRESPONSIVE, errno.ETIMEDOUT, unresponsive)
    if unkillable:
        return Outcome(
            Kind.UNKILLABLE,
            signal.SIGKILL,
            f"still running {kill_timeout:g}s after SIGKILL",
        )
    if not timed_out:
        return base
    what = f"still running after {timeout:g}s"
    if not signals_sent:
        return Outcome(Kind.TIMEOUT, 0, f"{what}, before it started")
    if base.kind is Kind.UNREACHABLE:
        return Outcome(Kind.TIMEOUT, 0, f"{what}; then {base.detail}")
    if signal.SIGKILL in signals_sent:
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

    def __init__(
        self,
        phase: str,
        label: str,
        ranks: list[RankReport],
        elapsed: float,
        logs_options: str = "",
    ) -> None:
        self.phase = phase
        self.label = label
        self.ranks = ranks
        self.elapsed = elapsed
        # What "sdexec logs" needs besides -r to find the ranks (" --hosts FILE").
        self.logs_options = logs_options

    def logs_command(self, r: RankReport) -> str | None:
        """The command that prints all of a rank's output (None: its server was not reached)."""
        if r.outcome.kind in (Kind.UNREACHABLE, Kind.UNRESPONSIVE):
            return None
        return f"sdexec logs{self.logs_options} -r {r.host.rank} {self.label}"

    @property
    def ok(self) -> bool:
        return all(r.outcome.ok for r in self.ranks)

    @property
    def failed(self) -> list[RankReport]:
        return [r for r in self.ranks if not r.outcome.ok]

    def reason(self, r: RankReport) -> str:
        """The drain reason: ``prolog timeout: still running after 30s, ...``."""
        text = f"{self.phase} {r.outcome.label}"
        if r.outcome.detail and r.outcome.kind not in (Kind.ERROR, Kind.FAILED):
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
                    "logs": self.logs_command(r),
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
            example = next((c for r in self.failed if (c := self.logs_command(r))), None)
            if example is not None:
                lines.append(f"all output: {example} (and -r for each rank above)")
        return "".join(line + "\n" for line in lines)
