"""Stored background output: the file store's replay/tail/follow and journal record decoding."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sdexec.server.outputlog import (
    PRIORITY_STDERR,
    FileLog,
    JournalLog,
    LogRequest,
    encode_record,
)
from sdexec.systemd.journal import Journal


def collect(
    log: FileLog, unit: str, tail: int | None, follow: bool = False
) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    asyncio.run(
        log.follow(
            LogRequest(unit, unit, lambda s, d: got.append((s, d)), lambda: True, tail, follow)
        )
    )
    return got


def test_file_log_replays_each_stream_in_order(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    log.path("u", "stdout").write_bytes(b"a\nb\n")
    log.path("u", "stderr").write_bytes(b"e\n")
    got = collect(log, "u", None)
    assert b"".join(d for s, d in got if s == "stdout") == b"a\nb\n"
    assert b"".join(d for s, d in got if s == "stderr") == b"e\n"


def test_file_log_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    log.path("u", "stdout").write_bytes(b"1\n2\n3\n4\n")
    assert collect(log, "u", 2) == [("stdout", b"3\n4\n")]


def test_file_log_tail_counts_a_last_line_without_newline(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    log.path("u", "stdout").write_bytes(b"1\n2\n3")
    assert collect(log, "u", 1) == [("stdout", b"3")]


def test_file_log_follow_sees_data_written_later(tmp_path: Path) -> None:
    log = FileLog(tmp_path)
    out = log.path("u", "stdout")
    out.write_bytes(b"first\n")
    done = False
    got: list[bytes] = []

    async def writer() -> None:
        nonlocal done
        await asyncio.sleep(0.1)
        out.write_bytes(out.read_bytes() + b"second\n")
        done = True

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer())
            tg.create_task(
                log.follow(LogRequest("u", "u", lambda s, d: got.append(d), lambda: done))
            )

    asyncio.run(main())
    assert b"".join(got) == b"first\nsecond\n"


def test_file_log_prepare_appends_to_files_in_its_directory(tmp_path: Path) -> None:
    prefix, props = FileLog(tmp_path / "out").prepare("u.service", "lab")
    assert prefix == []
    assert {name for name, _ in props} == {
        "StandardOutputFileToAppend",
        "StandardErrorFileToAppend",
    }
    assert (tmp_path / "out").is_dir()


def test_journal_record_restores_newline_unless_line_break_marked() -> None:
    got: list[tuple[str, bytes]] = []
    JournalLog._deliver(b'{"MESSAGE":"full","PRIORITY":"6"}', lambda s, d: got.append((s, d)))
    JournalLog._deliver(
        b'{"MESSAGE":"part","PRIORITY":"6","_LINE_BREAK":"eof"}', lambda s, d: got.append((s, d))
    )
    assert got == [("stdout", b"full\n"), ("stdout", b"part")]


def test_journal_record_priority_err_is_stderr_and_bytes_survive() -> None:
    got: list[tuple[str, bytes]] = []
    line = b'{"MESSAGE":[255,0,65],"PRIORITY":"%d","__CURSOR":"c1"}' % PRIORITY_STDERR
    assert JournalLog._deliver(line, lambda s, d: got.append((s, d))) == "c1"
    assert got == [("stderr", b"\xff\x00A\n")]


def test_journal_prepare_runs_the_command_behind_systemd_cat() -> None:
    prefix, props = JournalLog(Journal.for_mode("user")).prepare("u.service", "lab")
    assert prefix[0].endswith("systemd-cat") and prefix[-1] == "--"
    assert "lab" in prefix and "--level-prefix=false" in prefix
    assert dict(props)["SyslogIdentifier"].value == "lab"


def test_json_record_is_text_or_base64() -> None:
    assert encode_record("stdout", b"hi") == {"stream": "stdout", "data": "hi"}
    assert encode_record("stderr", b"\xff")["encoding"] == "base64"
