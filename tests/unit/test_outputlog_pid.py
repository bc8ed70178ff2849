"""`sdexec logs` finds lines journald could not attribute to the unit, by pid."""

from __future__ import annotations

from sdexec.server.outputlog import JournalLog
from sdexec.systemd.journal import Journal


def journal_log() -> JournalLog:
    return JournalLog(Journal(["--directory", "/j"], "USER_UNIT"))


def test_without_pid_the_match_is_unit_identifier_and_transport() -> None:
    argv = journal_log().argv("u.service", "job", tail=None, follow=False)
    assert argv[-3:] == [
        "_SYSTEMD_USER_UNIT=u.service",
        "SYSLOG_IDENTIFIER=job",
        "_TRANSPORT=stdout",
    ]


def test_with_pid_lines_without_a_unit_are_matched_by_pid() -> None:
    argv = journal_log().argv("u.service", "job", tail=3, follow=True, pid=42)
    i = argv.index("+")
    assert argv[i - 3 : i] == [
        "_SYSTEMD_USER_UNIT=u.service",
        "SYSLOG_IDENTIFIER=job",
        "_TRANSPORT=stdout",
    ]
    assert argv[i + 1 :] == ["_PID=42", "SYSLOG_IDENTIFIER=job", "_TRANSPORT=stdout"]
    assert "--follow" in argv
