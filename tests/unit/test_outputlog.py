"""Stored background output: the file store's replay/tail/follow and journal record decoding."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from pathlib import Path

import pytest

from sdexec.base.errors import SdexecError
from sdexec.server.outputlog import (
    PRIORITY_STDERR,
    FileLog,
    JournalLog,
    LogRequest,
    choose,
    encode_record,
)
from sdexec.systemd.journal import Journal, StreamsRead


def collect(
    log: FileLog, unit: str, tail: int | None, follow: bool = False
) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    asyncio.run(
        log.follow(
            LogRequest(unit, unit, lambda s, d, _w: got.append((s, d)), lambda: True, tail, follow)
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
                log.follow(LogRequest("u", "u", lambda s, d, _w: got.append(d), lambda: done))
            )

    asyncio.run(main())
    assert b"".join(got) == b"first\nsecond\n"


def test_file_log_prepare_appends_to_files_in_its_directory(tmp_path: Path) -> None:
    prepared = FileLog(tmp_path / "out").prepare("u.service", "lab")
    assert prepared.fds() == []
    assert {name for name, _ in prepared.properties} == {
        "StandardOutputFileToAppend",
        "StandardErrorFileToAppend",
    }
    assert (tmp_path / "out").is_dir()


def test_journal_record_restores_newline_unless_line_break_marked() -> None:
    got: list[tuple[str, bytes]] = []
    JournalLog._deliver(b'{"MESSAGE":"full","PRIORITY":"6"}', lambda s, d, _w: got.append((s, d)))
    JournalLog._deliver(
        b'{"MESSAGE":"part","PRIORITY":"6","_LINE_BREAK":"eof"}',
        lambda s, d, _w: got.append((s, d)),
    )
    assert got == [("stdout", b"full\n"), ("stdout", b"part")]


def test_journal_record_priority_err_is_stderr_and_bytes_survive() -> None:
    got: list[tuple[str, bytes]] = []
    line = b'{"MESSAGE":[255,0,65],"PRIORITY":"%d","__CURSOR":"c1"}' % PRIORITY_STDERR
    assert JournalLog._deliver(line, lambda s, d, _w: got.append((s, d))) == "c1"
    assert got == [("stderr", b"\xff\x00A\n")]


def test_journal_prepare_gives_two_journald_streams_with_their_headers(tmp_path: Path) -> None:
    path = str(tmp_path / "stdout")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as journald:
        journald.bind(path)
        journald.listen()
        prepared = JournalLog(Journal.for_mode("user"), lambda: path).prepare("u.service", "lab")
        try:
            assert dict(prepared.properties)["SyslogIdentifier"].value == "lab"
            headers = []
            for _ in range(2):
                conn, _ = journald.accept()
                with conn:
                    headers.append(conn.recv(4096))
            assert sorted(headers) == [
                b"lab\nu.service\n3\n0\n0\n0\n0\n",  # stderr: err
                b"lab\nu.service\n6\n0\n0\n0\n0\n",  # stdout: info
            ]
            for fd in prepared.fds():
                assert os.get_blocking(fd)  # the unit's processes write as to any file
        finally:
            for fd in prepared.fds():
                os.close(fd)


def _journald_streams(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "stdout")
    journald = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    journald.bind(path)
    journald.listen()
    return journald, path


def test_journal_barrier_is_reached_once_journald_has_read_all_of_both_streams(
    tmp_path: Path,
) -> None:
    journald, path = _journald_streams(tmp_path)
    with journald:
        log = JournalLog(Journal.for_mode("user"), lambda: path)
        prepared = log.prepare("u.service", "lab", barrier=True)
        assert prepared.barrier is not None
        conns = [journald.accept()[0] for _ in range(2)]
        for conn in conns:  # the stream headers
            conn.recv(4096)
        os.write(prepared.fds()[0], b"line\n" * 1000)  # the unit writes, then ends
        for fd in prepared.fds():
            os.close(fd)

        async def scenario() -> tuple[bool, bool]:
            assert prepared.barrier is not None
            waiting = asyncio.ensure_future(prepared.barrier.wait())
            await asyncio.sleep(0.05)
            early = waiting.done()  # journald has not read the lines yet
            got = b""
            while len(got) < 5000:
                got += await asyncio.to_thread(conns[0].recv, 65536)
            return early, await waiting

        early, reached = asyncio.run(scenario())
        for conn in conns:
            conn.close()
    assert (early, reached) == (False, True)
    assert prepared.barrier.fds == []  # its copies are closed once spent


def test_journal_barrier_says_false_when_journald_does_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StreamsRead, "LIMIT", 0.05)
    journald, path = _journald_streams(tmp_path)
    with journald:
        prepared = JournalLog(Journal.for_mode("user"), lambda: path).prepare("u", "l", True)
        conns = [journald.accept()[0] for _ in range(2)]
        os.write(prepared.fds()[1], b"never read\n")
        for fd in prepared.fds():
            os.close(fd)
        assert prepared.barrier is not None
        assert asyncio.run(prepared.barrier.wait()) is False
        for conn in conns:
            conn.close()


def test_file_output_is_in_the_file_when_the_process_ends(tmp_path: Path) -> None:
    barrier = FileLog(tmp_path).prepare("u.service", "lab", barrier=True).barrier
    assert barrier is not None and asyncio.run(barrier.wait()) is True
    assert FileLog(tmp_path).prepare("u.service", "lab").barrier is None


def test_no_journald_is_eio_and_says_where(tmp_path: Path) -> None:
    path = str(tmp_path / "none")
    with pytest.raises(SdexecError) as info:
        JournalLog(Journal.for_mode("user"), lambda: path).prepare("u.service", "lab")
    assert info.value.errno == errno.EIO
    assert path in info.value.message


def test_choose_takes_the_journal_only_when_its_socket_is_there(tmp_path: Path) -> None:
    path = str(tmp_path / "stdout")
    journal = Journal.for_mode("user")
    assert isinstance(choose(journal, True, tmp_path, lambda: path), FileLog)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as journald:
        journald.bind(path)
        assert isinstance(choose(journal, True, tmp_path, lambda: path), JournalLog)
        assert isinstance(choose(journal, False, tmp_path, lambda: path), FileLog)


def test_json_record_is_text_or_base64() -> None:
    assert encode_record("stdout", b"hi") == {"stream": "stdout", "data": "hi"}
    assert encode_record("stderr", b"\xff")["encoding"] == "base64"


def test_a_reader_that_ends_its_output_is_waited_for_never_killed(tmp_path: Path) -> None:
    """Killing a journalctl that is exiting by itself lets asyncio's kill() reap it
    under the child watcher ("Unknown child process pid N, will report returncode 255")."""
    mark = tmp_path / "exited-by-itself"
    script = f'echo \'{{"MESSAGE":"line","PRIORITY":"6"}}\'; exec >&-; sleep 0.3; touch "{mark}"'
    got: list[tuple[str, bytes]] = []
    log = JournalLog(Journal.for_mode("user"))
    asyncio.run(
        log._run(["sh", "-c", script], lambda s, d, _w: got.append((s, d)), None, None, None)
    )
    assert got == [("stdout", b"line\n")]
    assert mark.exists()
