"""The in-process journal reader (sdexec.systemd.sdjournal) on a real journald.

Units of the session's private manager write lines to the journal through
journald's stream protocol (``systemd-run -p StandardOutput=journal``); the
reader, opened once, must find exactly the newest of them, also those
written after it was opened, and agree with ``journalctl``.
"""

from __future__ import annotations

import itertools
import subprocess

from sdexec.systemd.journal import Journal
from sdexec.systemd.private import PrivateManager
from sdexec.systemd.sdjournal import open_reader

_count = itertools.count()


def run_unit(manager: PrivateManager, ident: str, script: str) -> None:
    subprocess.run(
        [
            "systemd-run", "--user", "-q", "--wait", "-p", "StandardOutput=journal",
            "-p", "StandardError=journal", "-p", f"SyslogIdentifier={ident}",
            "sh", "-c", script,
        ],
        env=manager.env(),
        check=True,
        timeout=60,
    )  # fmt: skip


def journalctl_messages(manager: PrivateManager, ident: str) -> list[str]:
    argv = Journal.for_mode("private", str(manager.journal_dir)).argv(
        "-o", "cat", f"SYSLOG_IDENTIFIER={ident}"
    )
    out = subprocess.run(argv, capture_output=True, check=True, timeout=60)
    return out.stdout.decode(errors="replace").splitlines()


def wait_for_lines(manager: PrivateManager, ident: str, n: int) -> None:
    """journald may still be writing when the unit's end is reported."""
    for _ in range(200):
        if len(journalctl_messages(manager, ident)) >= n:
            return
        subprocess.run(["sleep", "0.05"], check=True)
    raise AssertionError(f"{ident}: fewer than {n} lines reached the journal")


def test_the_reader_finds_the_newest_lines_and_those_written_after_it_opened(
    manager: PrivateManager,
) -> None:
    reader = open_reader(str(manager.journal_dir), user=False)
    assert reader is not None
    try:
        ident = f"sdj-{next(_count)}"
        match = [[f"SYSLOG_IDENTIFIER={ident}"]]
        assert reader.last(match, 1024) == []
        run_unit(manager, ident, "seq 1 3000; printf partial")
        wait_for_lines(manager, ident, 3001)
        entries = reader.last(match, 100)
        messages = [e.message for e in entries]
        assert messages[-2:] == [b"3000", b"partial"]
        assert entries[-1].line_break is not None and entries[-2].line_break is None
        assert all(e.priority == 6 for e in entries)
        # About 100 bytes: the newest lines, the oldest one crossing the bound.
        assert 100 <= sum(len(m) + 1 for m in messages) < 110
        full = journalctl_messages(manager, ident)
        assert [m.decode() for m in messages] == full[-len(messages) :]
    finally:
        reader.close()


def test_the_reader_keeps_stderr_apart_and_bytes_as_they_are(manager: PrivateManager) -> None:
    reader = open_reader(str(manager.journal_dir), user=False)
    assert reader is not None
    try:
        ident = f"sdj-{next(_count)}"
        run_unit(manager, ident, r"echo out; printf '<3>\377\001raw\n' >&2")  # <3>: err
        wait_for_lines(manager, ident, 2)
        entries = reader.last([[f"SYSLOG_IDENTIFIER={ident}"]], 1 << 20)
        assert [(e.message, e.priority) for e in entries] == [(b"out", 6), (b"\xff\x01raw", 3)]
    finally:
        reader.close()


def test_or_terms_match_either_and_and_terms_both(manager: PrivateManager) -> None:
    reader = open_reader(str(manager.journal_dir), user=False)
    assert reader is not None
    try:
        a, b = f"sdj-{next(_count)}", f"sdj-{next(_count)}"
        run_unit(manager, a, "echo from-a")
        run_unit(manager, b, "echo from-b")
        wait_for_lines(manager, b, 1)
        wait_for_lines(manager, a, 1)
        both = reader.last([[f"SYSLOG_IDENTIFIER={a}"], [f"SYSLOG_IDENTIFIER={b}"]], 1 << 20)
        assert [e.message for e in both] == [b"from-a", b"from-b"]
        none = reader.last([[f"SYSLOG_IDENTIFIER={a}", "PRIORITY=3"]], 1 << 20)
        assert none == []
    finally:
        reader.close()


def test_no_such_journal_directory_gives_no_reader(tmp_path: object) -> None:
    assert open_reader("/nonexistent/journal/dir", user=False) is None
