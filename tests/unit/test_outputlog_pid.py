"""`sdexec logs` finds lines journald could not attribute to the unit, by pid."""

from __future__ import annotations

from sdexec.server.outputlog import JournalLog
from sdexec.systemd.journal import Journal


def journal_log() -> JournalLog:
    return JournalLog(Journal(["--directory", "/j"], "USER_UNIT"))


def terms(argv: list[str]) -> list[list[str]]:
    """The journalctl match terms at the end of ``argv`` (joined by "+", which is OR)."""
    first = next(i for i, a in enumerate(argv) if "=" in a and not a.startswith("-"))
    out: list[list[str]] = [[]]
    for arg in argv[first:]:
        if arg == "+":
            out.append([])
        else:
            out[-1].append(arg)
    return out


COMMON = ["SYSLOG_IDENTIFIER=job", "_TRANSPORT=stdout"]


def test_without_pid_the_match_is_the_unit_as_cgroup_or_as_stream_header() -> None:
    argv = journal_log().argv("u.service", "job", tail=None, follow=False)
    assert terms(argv) == [
        ["_SYSTEMD_USER_UNIT=u.service", *COMMON],
        ["_SYSTEMD_UNIT=u.service", *COMMON],  # an exited writer: the unit our header names
    ]


def test_with_pid_lines_without_a_unit_are_matched_by_pid() -> None:
    argv = journal_log().argv("u.service", "job", tail=3, follow=True, pid=42)
    assert terms(argv)[-1] == ["_PID=42", *COMMON]
    assert "--follow" in argv


def test_the_system_journal_names_the_unit_once() -> None:
    log = JournalLog(Journal.for_mode("system"))
    assert terms(log.argv("u.service", "job", tail=None, follow=False)) == [
        ["_SYSTEMD_UNIT=u.service", *COMMON]
    ]
