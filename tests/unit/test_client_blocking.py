"""The CLI's blocking client and its exec loop, against the scripted fake server."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_client import Conn, ScriptedServer, credit_checking_echo, out, recv_until, short_path

from sdexec.base.errors import SdexecError
from sdexec.client.blocking import BlockingHandle, SignalPipe, run_exec
from sdexec.client.exec import ExecFailed, ExecSession, build_command
from sdexec.client.rpc import RemoteError
from sdexec.proto.message import Message, MsgFlag

ENODATA = errno.ENODATA


def eof(stream: str) -> dict[str, object]:
    return {"type": "output", "pid": 42, "io": {"stream": stream, "rank": "0", "eof": True}}


def finish(conn: Conn, req: Message, status: int) -> None:
    conn.respond(req, eof("stdout"))
    conn.respond(req, eof("stderr"))
    conn.respond(req, {"type": "finished", "status": status})
    conn.respond(req, errnum=ENODATA)


class Files:
    """Regular files standing in for the CLI's stdout and stderr."""

    def __init__(self, tmp_path: Path) -> None:
        self.out_path = tmp_path / "out"
        self.err_path = tmp_path / "err"
        self.stdout = os.open(self.out_path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.stderr = os.open(self.err_path, os.O_WRONLY | os.O_CREAT, 0o600)

    def close(self) -> None:
        os.close(self.stdout)
        os.close(self.stderr)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Files]:
    f = Files(tmp_path)
    yield f
    f.close()


def session(cmdline: list[str] | None = None) -> ExecSession:
    return ExecSession(build_command(cmdline or ["cat"], env={}, cwd="/"))


# --- BlockingHandle ------------------------------------------------------------------------


def test_blocking_rpc_round_trip(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        assert req.routes == [] and req.matchtag == 1 and req.topic == "sdexec.list"
        conn.respond(req, {"rank": 0, "procs": []})

    with (
        ScriptedServer(short_path(tmp_path), script) as server,
        BlockingHandle.connect(server.uri) as h,
    ):
        assert h.rpc("sdexec.list", {}) == {"rank": 0, "procs": []}


def test_blocking_rpc_error_is_remote_error(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv(), errnum=errno.ESRCH, text="no such process")

    with (
        ScriptedServer(short_path(tmp_path), script) as server,
        BlockingHandle.connect(server.uri) as h,
        pytest.raises(RemoteError) as info,
    ):
        h.rpc("sdexec.kill", {"pid": 1, "signum": 15})
    assert (info.value.errno, info.value.message) == (errno.ESRCH, "no such process")


def test_blocking_rpc_keeps_other_responses_for_receive(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        conn.send(Message.request("x", {}).response({"other": True}))  # matchtag 0
        conn.respond(req, {"mine": True})

    with (
        ScriptedServer(short_path(tmp_path), script) as server,
        BlockingHandle.connect(server.uri) as h,
    ):
        assert h.rpc("t.x", {}) == {"mine": True}
        (other,) = h.receive()
        assert other.json() == {"other": True}


def test_blocking_connect_refused_and_missing(tmp_path: Path) -> None:
    with (
        ScriptedServer(short_path(tmp_path), lambda c: None, handshake=bytes([errno.EACCES])) as s,
        pytest.raises(SdexecError) as info,
    ):
        BlockingHandle.connect(s.uri)
    assert info.value.errno == errno.EACCES
    assert info.value.message == "server refused the connection: Permission denied"
    with pytest.raises(SdexecError) as info:
        BlockingHandle.connect(f"local://{tmp_path}/none")
    assert info.value.errno == errno.ENOENT


def hang_up_after_one_request(conn: Conn) -> None:
    conn.recv()


def test_blocking_connection_loss_is_econnreset(tmp_path: Path) -> None:
    with (
        ScriptedServer(short_path(tmp_path), hang_up_after_one_request) as server,
        BlockingHandle.connect(server.uri) as h,
        pytest.raises(SdexecError) as info,
    ):
        h.rpc("t.x", {})
    assert info.value.errno == errno.ECONNRESET


# --- run_exec -----------------------------------------------------------------------------------


def test_output_is_written_byte_exact(tmp_path: Path, files: Files) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        assert req.flags & MsgFlag.STREAMING
        assert req.json()["flags"] == 11
        conn.respond(req, {"type": "started", "pid": 42})
        conn.respond(req, out(b"\x00\xffbinary\n"))
        conn.respond(
            req, {"type": "output", "io": {"stream": "stderr", "rank": "0", "data": "é\n"}}
        )
        conn.respond(req, out(b"no newline at the end"))
        finish(conn, req, 3 << 8)

    with (
        ScriptedServer(short_path(tmp_path), script) as server,
        BlockingHandle.connect(server.uri) as h,
    ):
        status = run_exec(
            h, session(), stdin_fd=None, stdout_fd=files.stdout, stderr_fd=files.stderr
        )
    assert status == 3 << 8
    assert files.out_path.read_bytes() == b"\x00\xffbinary\nno newline at the end"
    assert files.err_path.read_bytes() == "é\n".encode()


def test_without_stdin_eof_is_sent_right_after_started(tmp_path: Path, files: Files) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        conn.respond(req, {"type": "started", "pid": 42})
        write = conn.recv()
        assert write.topic == "sdexec.write"
        assert write.flags & MsgFlag.NORESPONSE and write.matchtag == 0
        assert write.json() == {
            "matchtag": req.matchtag,
            "io": {"stream": "stdin", "rank": "0", "eof": True},
        }
        finish(conn, req, 0)

    with (
        ScriptedServer(short_path(tmp_path), script) as server,
        BlockingHandle.connect(server.uri) as h,
    ):
        assert run_exec(h, session(), stdin_fd=None, stdout_fd=files.stdout) == 0


DATA = bytes(range(256)) * 40 + "and some text ✓\n".encode() * 200


def test_stdin_from_a_pipe_is_forwarded_within_credit(tmp_path: Path, files: Files) -> None:
    r, w = os.pipe()
    os.write(w, DATA)
    os.close(w)
    try:
        with (
            ScriptedServer(short_path(tmp_path), credit_checking_echo) as server,
            BlockingHandle.connect(server.uri) as h,
        ):
            assert run_exec(h, session(), stdin_fd=r, stdout_fd=files.stdout) == 0
    finally:
        os.close(r)
    assert files.out_path.read_bytes() == DATA


def test_stdin_from_a_regular_file_and_dev_null(tmp_path: Path, files: Files) -> None:
    src = tmp_path / "in"
    src.write_bytes(DATA)
    for path, expected in ((src, DATA), (Path(os.devnull), b"")):
        os.ftruncate(files.stdout, 0)
        fd = os.open(path, os.O_RDONLY)
        try:
            sock = tmp_path / "s2"
            with (
                ScriptedServer(sock, credit_checking_echo) as server,
                BlockingHandle.connect(server.uri) as h,
            ):
                assert run_exec(h, session(), stdin_fd=fd, stdout_fd=files.stdout) == 0
        finally:
            os.close(fd)
            sock.unlink()
        assert files.out_path.read_bytes() == expected


def test_exec_error_response_raises_exec_failed(tmp_path: Path, files: Files) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv(), errnum=errno.ENOENT, text="nosuch: No such file or directory")

    with (
        ScriptedServer(short_path(tmp_path), script) as server,
        BlockingHandle.connect(server.uri) as h,
        pytest.raises(ExecFailed) as info,
    ):
        run_exec(h, session(["nosuch"]), stdin_fd=None, stdout_fd=files.stdout)
    assert info.value.errno == errno.ENOENT
    assert info.value.message == "nosuch: No such file or directory"


def test_connection_loss_during_exec_is_econnreset(tmp_path: Path, files: Files) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv(), {"type": "started", "pid": 42})

    with (
        ScriptedServer(short_path(tmp_path), script) as server,
        BlockingHandle.connect(server.uri) as h,
        pytest.raises(SdexecError) as info,
    ):
        run_exec(h, session(), stdin_fd=None, stdout_fd=files.stdout)
    assert info.value.errno == errno.ECONNRESET


def test_a_signal_before_started_is_forwarded_once_started(tmp_path: Path, files: Files) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        os.kill(os.getpid(), signal.SIGTERM)
        conn.respond(req, {"type": "started", "pid": 42})
        kill = recv_until(conn, "sdexec.kill")
        assert kill.json() == {"pid": 42, "signum": signal.SIGTERM}
        conn.respond(kill)
        finish(conn, req, signal.SIGTERM)

    signals = SignalPipe((signal.SIGINT, signal.SIGTERM))
    try:
        with (
            ScriptedServer(short_path(tmp_path), script) as server,
            BlockingHandle.connect(server.uri) as h,
        ):
            status = run_exec(h, session(), stdin_fd=None, stdout_fd=files.stdout, signals=signals)
    finally:
        signals.restore()
    assert status == signal.SIGTERM


def test_a_second_sigint_within_a_second_gives_up(tmp_path: Path, files: Files) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        conn.respond(req, {"type": "started", "pid": 42})
        os.kill(os.getpid(), signal.SIGINT)
        kill = recv_until(conn, "sdexec.kill")  # the first one is forwarded
        assert kill.json()["signum"] == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)  # (pending signals of one kind merge)
        try:
            while True:
                conn.recv()
        except (EOFError, OSError):
            pass

    signals = SignalPipe((signal.SIGINT, signal.SIGTERM))
    try:
        with (
            ScriptedServer(short_path(tmp_path), script) as server,
            BlockingHandle.connect(server.uri) as h,
            pytest.raises(SdexecError) as info,
        ):
            run_exec(h, session(), stdin_fd=None, stdout_fd=files.stdout, signals=signals)
    finally:
        signals.restore()
    assert info.value.errno == errno.EINTR


def test_a_broken_stdout_pipe_sends_sigpipe(tmp_path: Path, files: Files) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        conn.respond(req, {"type": "started", "pid": 42})
        conn.respond(req, out(b"yes\n" * 10))
        kill = recv_until(conn, "sdexec.kill")
        assert kill.json() == {"pid": 42, "signum": signal.SIGPIPE}
        conn.respond(kill)
        conn.respond(req, out(b"dropped\n"))
        finish(conn, req, signal.SIGPIPE)

    r, w = os.pipe()
    os.close(r)
    try:
        with (
            ScriptedServer(short_path(tmp_path), script) as server,
            BlockingHandle.connect(server.uri) as h,
        ):
            assert run_exec(h, session(), stdin_fd=None, stdout_fd=w) == signal.SIGPIPE
    finally:
        os.close(w)


def test_a_failed_kill_is_reported_through_warn(tmp_path: Path, files: Files) -> None:
    warnings: list[str] = []

    def script(conn: Conn) -> None:
        req = conn.recv()
        conn.respond(req, {"type": "started", "pid": 42})
        os.kill(os.getpid(), signal.SIGTERM)
        kill = recv_until(conn, "sdexec.kill")
        conn.respond(kill, errnum=errno.EPERM, text="not allowed")
        recv_until(conn, "sdexec.sync")
        finish(conn, req, 0)

    signals = SignalPipe((signal.SIGTERM,))
    try:
        with (
            ScriptedServer(short_path(tmp_path), script) as server,
            BlockingHandle.connect(server.uri) as h,
        ):

            def warn(text: str) -> None:
                warnings.append(text)
                h.send("sdexec.sync", {})

            run_exec(
                h, session(), stdin_fd=None, stdout_fd=files.stdout, signals=signals, warn=warn
            )
    finally:
        signals.restore()
    assert warnings == ["kill: not allowed"]


def test_an_output_write_error_other_than_epipe_is_raised(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        conn.respond(req, {"type": "started", "pid": 42})
        conn.respond(req, out(b"data\n"))
        with contextlib.suppress(EOFError, OSError):
            conn.recv()  # until the client hangs up

    readonly = os.open(os.devnull, os.O_RDONLY)
    try:
        with (
            ScriptedServer(short_path(tmp_path), script) as server,
            BlockingHandle.connect(server.uri) as h,
            pytest.raises(SdexecError) as info,
        ):
            run_exec(h, session(), stdin_fd=None, stdout_fd=readonly)
    finally:
        os.close(readonly)
    assert info.value.errno == errno.EBADF
    assert info.value.message == "cannot write stdout: Bad file descriptor"


def test_a_link_opened_early_is_the_one_connect_uses(tmp_path: Path) -> None:
    from sdexec.transport import connector

    def script(conn: Conn) -> None:
        req = conn.recv()
        conn.respond(req, {"rank": 0, "procs": []})

    with ScriptedServer(short_path(tmp_path), script) as server:
        connector.open_early(server.uri)
        early = connector._early[server.uri]
        with BlockingHandle.connect(server.uri) as h:
            assert h.fileno() == early.sock.fileno()
            assert h.rpc("sdexec.list", {}) == {"rank": 0, "procs": []}
        assert server.uri not in connector._early  # used once


def test_a_failed_early_link_is_reported_by_connect(tmp_path: Path) -> None:
    from sdexec.transport import connector

    uri = f"local://{tmp_path}/none"
    connector.open_early(uri)
    assert uri not in connector._early
    with pytest.raises(SdexecError) as info:
        BlockingHandle.connect(uri)
    assert info.value.errno == errno.ENOENT


def test_an_early_link_announces_an_exec_by_its_socket_name(tmp_path: Path) -> None:
    import socket

    from sdexec.transport.link import EXEC_ANNOUNCE, connect_local
    from sdexec.transport.unix import peer_name

    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(2)
        announced = connect_local(path, f"{EXEC_ANNOUNCE}{os.getpid()}")
        plain = connect_local(path)
        try:
            first, second = server.accept()[0], server.accept()[0]
            names = [peer_name(first), peer_name(second)]
            first.close()
            second.close()
        finally:
            announced.close()
            plain.close()
    assert names == [f"{EXEC_ANNOUNCE}{os.getpid()}", ""]
