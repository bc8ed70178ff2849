"""Perilog classification and reports, without servers (the runs are integration tests)."""

from __future__ import annotations

import errno
import signal
from typing import Any

from sdexec.cluster.hosts import Host
from sdexec.cluster.outcome import Kind, Outcome
from sdexec.cluster.perilog_report import TAIL_BYTES, RankReport, Report, Tail, classify


def run_with(
    outcome: Outcome,
    *,
    timed_out: bool = False,
    sent: tuple[int, ...] = (),
    unkillable: bool = False,
) -> dict[str, Any]:
    """classify()'s arguments for a run that ended with ``outcome``."""
    return {
        "base": outcome,
        "timed_out": timed_out,
        "signals_sent": list(sent),
        "unkillable": unkillable,
    }


def classified(args: dict[str, Any], timeout: float, kill_timeout: float) -> Outcome:
    return classify(**args, timeout=timeout, kill_timeout=kill_timeout)


def test_finished_in_time_keeps_its_outcome() -> None:
    assert classified(run_with(Outcome(Kind.EXIT, 3)), 5, 1) == Outcome(Kind.EXIT, 3)


def test_stopped_by_sigterm_is_timeout() -> None:
    o = classified(run_with(Outcome(Kind.SIGNAL, 15), timed_out=True, sent=(signal.SIGTERM,)), 5, 1)
    assert (o.kind, o.code) == (Kind.TIMEOUT, 15)
    assert o.detail == "still running after 5s, stopped by SIGTERM"


def test_exiting_cleanly_on_sigterm_is_still_timeout() -> None:
    o = classified(run_with(Outcome(Kind.OK), timed_out=True, sent=(signal.SIGTERM,)), 5, 1)
    assert o.kind is Kind.TIMEOUT


def test_killed_after_kill_timeout_is_timeout_with_sigkill() -> None:
    sent = (signal.SIGTERM, signal.SIGKILL)
    o = classified(run_with(Outcome(Kind.SIGNAL, 9), timed_out=True, sent=sent), 5, 2)
    assert (o.kind, o.code) == (Kind.TIMEOUT, 9)
    assert "ignored SIGTERM for 2s, killed by SIGKILL" in o.detail


def test_alive_after_sigkill_is_unkillable() -> None:
    run = run_with(Outcome(Kind.UNREACHABLE, errno.ETIMEDOUT), timed_out=True, unkillable=True)
    o = classified(run, 5, 2)
    assert o.kind is Kind.UNKILLABLE
    assert o.detail == "still running 2s after SIGKILL"


def test_timeout_before_start_is_timeout() -> None:
    o = classified(run_with(Outcome(Kind.UNREACHABLE, errno.ETIMEDOUT), timed_out=True), 5, 1)
    assert o.kind is Kind.TIMEOUT
    assert "before it started" in o.detail


def test_unreachable_stays_unreachable() -> None:
    o = Outcome(Kind.UNREACHABLE, errno.ENOENT, "no socket")
    assert classified(run_with(o), 5, 1) == o


def test_tail_keeps_the_last_lines() -> None:
    t = Tail()
    for i in range(100):
        t.feed(f"line {i}\n".encode())
    assert t.lines(2) == ["line 98", "line 99"]


def test_tail_is_bounded() -> None:
    t = Tail()
    t.feed(b"x" * (TAIL_BYTES * 3))
    assert t.total == TAIL_BYTES * 3
    assert len(t.lines(1)[0]) == TAIL_BYTES


def test_tail_replaces_bad_utf8() -> None:
    t = Tail()
    t.feed(b"ok \xff\n")
    assert t.lines(5) == ["ok \ufffd"]


def _report() -> Report:
    ranks = [
        RankReport(Host(0, "local:///a", "node0"), Outcome(Kind.OK), 0.1, ["fine"]),
        RankReport(
            Host(1, "local:///b", "node1"),
            Outcome(Kind.TIMEOUT, 15, "still running after 5s, stopped by SIGTERM"),
            5.2,
            ["waiting for nfs"],
        ),
    ]
    return Report("prolog", "sdexec-prolog-1", ranks, 5.3)


def test_report_drains_failing_ranks_with_a_reason() -> None:
    data = _report().to_json()
    assert data["ok"] is False
    assert data["drain"] == [
        {
            "rank": 1,
            "host": "node1",
            "phase": "prolog",
            "outcome": "timeout",
            "reason": "prolog timeout: still running after 5s, stopped by SIGTERM",
            "output": ["waiting for nfs"],
            "logs": "sdexec logs -r 1 sdexec-prolog-1",
        }
    ]


def test_report_counts_and_summary() -> None:
    data = _report().to_json()
    assert data["counts"] == {"ok": 1, "timeout": 1}
    assert data["summary"] == ["0: ok", "1: timeout"]


def test_text_report_quotes_last_lines() -> None:
    text = _report().render()
    assert "  node1 (rank 1): prolog timeout: still running after 5s" in text
    assert "    | waiting for nfs\n" in text


def test_the_text_report_says_how_to_print_all_of_a_ranks_output() -> None:
    assert "all output: sdexec logs -r 1 sdexec-prolog-1 (and -r for each rank above)\n" in (
        _report().render()
    )


def test_an_unresponsive_server_is_its_own_outcome_never_unkillable() -> None:
    base = Outcome(Kind.UNREACHABLE, 110, "server not responding")
    outcome = classify(
        base,
        timed_out=True,
        signals_sent=[],
        unkillable=False,
        timeout=3,
        kill_timeout=2,
        unresponsive="no answer to SIGTERM in 2s",
    )
    assert (outcome.kind, outcome.label, outcome.detail) == (
        Kind.UNRESPONSIVE, "server not responding", "no answer to SIGTERM in 2s"
    )  # fmt: skip
    assert outcome.exit_code() == 68
