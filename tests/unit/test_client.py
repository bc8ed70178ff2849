"""The asyncio client Handle against a scripted fake server.

The fake server (:class:`ScriptedServer`, also used by the blocking-client and
CLI tests) is a thread that accepts one connection on a temporary UNIX
socket, writes the handshake byte and then runs a test's script, speaking the
project's own codec.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdexec.base.errors import SdexecError
from sdexec.client.exec import ExecFailed, build_command
from sdexec.client.handle import Handle
from sdexec.client.process import Completed, RemoteProcess, run
from sdexec.client.rpc import RemoteError
from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import NODEID_ANY, Message, MsgFlag, MsgType


class Conn:
    """The server's end of one client connection (blocking)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = FrameDecoder()
        self._queue: list[Message] = []

    def recv(self) -> Message:
        while True:
            while not self._queue:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("client closed the connection")
                self._queue.extend(self._decoder.feed(data))
            msg = self._queue.pop(0)
            if msg.topic == "attr.get" and msg.json().get("name") == "security.owner":
                # As a real server owned by the caller answers the CLI's signing check.
                self.respond(msg, {"value": str(os.getuid()), "flags": 1})
                continue
            return msg

    def send(self, msg: Message) -> None:
        self.sock.sendall(encode_frame(msg))

    def respond(
        self,
        req: Message,
        payload: Any = None,
        *,
        errnum: int = 0,
        text: str | None = None,
    ) -> None:
        self.send(req.response(payload, errnum=errnum, text=text))

    def close(self) -> None:
        self.sock.close()


Script = Callable[[Conn], None]


class ScriptedServer:
    """A fake server for one connection, run by a thread; re-raises its errors."""

    def __init__(self, path: Path, script: Script, *, handshake: bytes = b"\0") -> None:
        self.path = path
        self.uri = f"local://{path}"
        self.script = script
        self.handshake = handshake
        self.error: BaseException | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            sock, _ = self._listener.accept()
            with sock:
                sock.sendall(self.handshake)
                if self.handshake == b"\0":
                    self.script(Conn(sock))
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(10)
        self._listener.close()
        assert not self._thread.is_alive(), "the fake server did not finish"
        if self.error is not None and exc[0] is None:
            raise self.error


def short_path(tmp_path: Path) -> Path:
    """A socket path short enough for sun_path (pytest's tmp paths can be long)."""
    return tmp_path / "s"


def out(data: bytes, stream: str = "stdout") -> dict[str, object]:
    """An output response carrying ``data`` as base64."""
    io = {
        "stream": stream,
        "rank": "0",
        "data": base64.b64encode(data).decode(),
        "encoding": "base64",
    }
    return {"type": "output", "pid": 42, "io": io}


def recv_until(conn: Conn, topic: str) -> Message:
    """The next request with ``topic``, skipping others."""
    while True:
        msg = conn.recv()
        if msg.topic == topic:
            return msg


def credit_checking_echo(conn: Conn) -> None:
    """A cat that grants credit in small steps and checks the client never overruns it."""
    req = conn.recv()
    conn.respond(req, {"type": "started", "pid": 42})
    granted = 4096
    conn.respond(req, {"type": "add-credit", "channels": {"stdin": granted}})
    received = bytearray()
    while True:
        msg = recv_until(conn, "sdexec.write")
        payload = msg.json()
        assert payload["matchtag"] == req.matchtag
        io = payload["io"]
        if io.get("eof"):
            assert "data" not in io
            break
        data = (
            base64.b64decode(io["data"]) if io.get("encoding") == "base64" else io["data"].encode()
        )
        received += data
        assert len(received) <= granted, "the client wrote beyond its credit"
        if len(received) == granted:
            granted += 1000
            conn.respond(req, {"type": "add-credit", "channels": {"stdin": 1000}})
    conn.respond(req, out(bytes(received)))
    conn.respond(req, {"type": "finished", "status": 0})
    conn.respond(req, errnum=errno.ENODATA)


# --- connecting -----------------------------------------------------------------------


def test_connect_reads_the_handshake_and_sends_a_flux_style_request(tmp_path: Path) -> None:
    seen: list[Message] = []

    def script(conn: Conn) -> None:
        req = conn.recv()
        seen.append(req)
        conn.respond(req, {"value": 42})

    async def main() -> dict[str, Any]:
        async with await Handle.connect(server.uri) as h:
            return await h.rpc("attr.get", {"name": "x"})

    with ScriptedServer(short_path(tmp_path), script) as server:
        assert asyncio.run(main()) == {"value": 42}
    (req,) = seen
    assert req.type == MsgType.REQUEST
    assert req.routes == []
    assert req.topic == "attr.get"
    assert req.payload == b'{"name":"x"}\0'
    assert req.nodeid == NODEID_ANY
    assert req.matchtag >= 1
    assert not req.flags & (MsgFlag.STREAMING | MsgFlag.NORESPONSE)


def test_a_refused_handshake_raises_its_errno(tmp_path: Path) -> None:
    async def main() -> None:
        await Handle.connect(server.uri)

    with (
        ScriptedServer(
            short_path(tmp_path), lambda c: None, handshake=bytes([errno.EPERM])
        ) as server,
        pytest.raises(SdexecError) as info,
    ):
        asyncio.run(main())
    assert info.value.errno == errno.EPERM
    assert info.value.message == "server refused the connection: Operation not permitted"


def test_a_missing_socket_is_enoent_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nothing"
    with pytest.raises(SdexecError) as info:
        asyncio.run(Handle.connect(f"local://{path}"))
    assert info.value.errno == errno.ENOENT
    assert info.value.message == f"server socket {path} was not found"


def test_connect_resolves_a_bare_path(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv(), {})

    async def main() -> dict[str, Any]:
        async with await Handle.connect(str(server.path)) as h:
            return await h.rpc("x.y", {})

    with ScriptedServer(short_path(tmp_path), script) as server:
        assert asyncio.run(main()) == {}


def test_connect_uses_sdexec_uri_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv(), {"ok": True})

    async def main() -> dict[str, Any]:
        async with await Handle.connect() as h:
            return await h.rpc("x.y")

    with ScriptedServer(short_path(tmp_path), script) as server:
        monkeypatch.setenv("SDEXEC_URI", server.uri)
        assert asyncio.run(main()) == {"ok": True}


# --- rpc ----------------------------------------------------------------------------------


def test_rpc_with_an_empty_success_payload_returns_an_empty_dict(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv())

    async def main() -> dict[str, Any]:
        async with await Handle.connect(server.uri) as h:
            return await h.rpc("sdexec.kill", {"pid": 1, "signum": 15})

    with ScriptedServer(short_path(tmp_path), script) as server:
        assert asyncio.run(main()) == {}


def test_rpc_error_response_raises_remote_error_with_its_text(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv(), errnum=errno.ENOSYS, text="No service matching x.y")

    async def main() -> None:
        async with await Handle.connect(server.uri) as h:
            await h.rpc("x.y", {})

    with ScriptedServer(short_path(tmp_path), script) as server, pytest.raises(RemoteError) as info:
        asyncio.run(main())
    assert info.value.errno == errno.ENOSYS
    assert info.value.message == "No service matching x.y"


def test_rpc_error_without_text_uses_strerror(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv(), errnum=errno.ESRCH)

    async def main() -> None:
        async with await Handle.connect(server.uri) as h:
            await h.rpc("x.y", {})

    with ScriptedServer(short_path(tmp_path), script) as server, pytest.raises(RemoteError) as info:
        asyncio.run(main())
    assert info.value.message == os.strerror(errno.ESRCH)


def test_concurrent_rpcs_get_distinct_nonzero_matchtags_and_their_own_answers(
    tmp_path: Path,
) -> None:
    def script(conn: Conn) -> None:
        a, b = conn.recv(), conn.recv()
        assert a.matchtag != b.matchtag
        assert 0 not in (a.matchtag, b.matchtag)
        conn.respond(b, {"n": b.json()["n"]})  # answer out of order
        conn.respond(a, {"n": a.json()["n"]})

    async def main() -> list[dict[str, Any]]:
        async with await Handle.connect(server.uri) as h:
            return list(await asyncio.gather(h.rpc("t.a", {"n": 1}), h.rpc("t.b", {"n": 2})))

    with ScriptedServer(short_path(tmp_path), script) as server:
        assert asyncio.run(main()) == [{"n": 1}, {"n": 2}]


def test_a_matchtag_is_reused_only_after_its_rpc_completed(tmp_path: Path) -> None:
    tags: list[int] = []

    def script(conn: Conn) -> None:
        for _ in range(3):
            req = conn.recv()
            tags.append(req.matchtag)
            conn.respond(req, {})

    async def main() -> None:
        async with await Handle.connect(server.uri) as h:
            for _ in range(3):
                await h.rpc("t.x", {})
            assert not h._pending

    with ScriptedServer(short_path(tmp_path), script) as server:
        asyncio.run(main())
    assert len(tags) == 3 and 0 not in tags


# --- streams and send ------------------------------------------------------------------


def test_stream_yields_each_response_until_enodata(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        assert req.flags & MsgFlag.STREAMING
        for i in range(3):
            conn.respond(req, {"i": i})
        conn.respond(req, errnum=errno.ENODATA)

    async def main() -> tuple[int, list[dict[str, Any]]]:
        async with await Handle.connect(server.uri) as h:
            stream = h.stream("sdexec.exec", {"cmd": {}})
            tag = stream.matchtag
            return tag, [resp async for resp in stream]

    with ScriptedServer(short_path(tmp_path), script) as server:
        tag, out = asyncio.run(main())
    assert tag >= 1
    assert out == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_stream_error_other_than_enodata_raises(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        conn.respond(req, {"type": "x"})
        conn.respond(req, errnum=errno.ENOENT, text="nosuch: No such file or directory")

    async def main() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with await Handle.connect(server.uri) as h:
            async for resp in h.stream("sdexec.exec", {}):
                out.append(resp)
        return out

    with ScriptedServer(short_path(tmp_path), script) as server, pytest.raises(RemoteError) as info:
        asyncio.run(main())
    assert info.value.errno == errno.ENOENT
    assert info.value.message == "nosuch: No such file or directory"


def test_send_is_noresponse_with_matchtag_zero(tmp_path: Path) -> None:
    seen: list[Message] = []

    def script(conn: Conn) -> None:
        seen.append(conn.recv())
        conn.respond(conn.recv(), {})

    async def main() -> None:
        async with await Handle.connect(server.uri) as h:
            h.send("sdexec.write", {"matchtag": 1, "io": {"stream": "stdin", "rank": "0"}})
            await h.rpc("t.sync", {})

    with ScriptedServer(short_path(tmp_path), script) as server:
        asyncio.run(main())
    (msg,) = seen
    assert msg.topic == "sdexec.write"
    assert msg.matchtag == 0
    assert msg.flags & MsgFlag.NORESPONSE


# --- connection loss --------------------------------------------------------------------


def test_connection_loss_fails_pending_rpcs_and_streams_with_econnreset(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        reqs = {m.topic: m for m in (conn.recv(), conn.recv())}
        conn.respond(reqs["t.stream"], {"first": True})
        conn.close()

    async def main() -> tuple[object, list[dict[str, Any]], BaseException, BaseException]:
        h = await Handle.connect(server.uri)
        rpc = asyncio.ensure_future(h.rpc("t.hang", {}))
        got: list[dict[str, Any]] = []
        try:
            async for resp in h.stream("t.stream", {}):
                got.append(resp)
        except SdexecError as exc:
            stream_exc: BaseException = exc
        rpc_exc = await asyncio.gather(rpc, return_exceptions=True)
        try:
            await h.rpc("t.after", {})
        except SdexecError as exc:
            after_exc: BaseException = exc
        await h.close()
        return rpc_exc[0], got, stream_exc, after_exc

    with ScriptedServer(short_path(tmp_path), script) as server:
        rpc_exc, got, stream_exc, after_exc = asyncio.run(main())
    assert got == [{"first": True}]
    for exc in (rpc_exc, stream_exc, after_exc):
        assert isinstance(exc, SdexecError)
        assert exc.errno == errno.ECONNRESET
        assert exc.message == "connection to server lost"


def test_garbage_from_the_server_fails_pending_calls_with_eproto(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        conn.recv()
        conn.sock.sendall(b"\x00" * 16)

    async def main() -> None:
        async with await Handle.connect(server.uri) as h:
            await h.rpc("t.x", {})

    with ScriptedServer(short_path(tmp_path), script) as server, pytest.raises(SdexecError) as info:
        asyncio.run(main())
    assert info.value.errno == errno.EPROTO


# --- RemoteProcess / run ------------------------------------------------------------------


def test_run_feeds_input_within_credit_and_collects_output(tmp_path: Path) -> None:
    data = bytes(range(256)) * 50

    async def main() -> Completed:
        async with await Handle.connect(server.uri) as h:
            return await run(h, ["cat"], input=data, env={})

    with ScriptedServer(short_path(tmp_path), credit_checking_echo) as server:
        result = asyncio.run(main())
    assert (result.pid, result.status, result.returncode) == (42, 0, 0)
    assert result.stdout == data and result.stderr == b""


def test_remote_process_start_failure_is_exec_failed(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv(), errnum=errno.EACCES, text="x: Permission denied")

    async def main() -> None:
        async with await Handle.connect(server.uri) as h:
            await RemoteProcess(h, build_command(["x"], env={})).start()

    with ScriptedServer(short_path(tmp_path), script) as server, pytest.raises(ExecFailed) as info:
        asyncio.run(main())
    assert info.value.errno == errno.EACCES


def test_remote_process_kill_and_output_callback(tmp_path: Path) -> None:
    def script(conn: Conn) -> None:
        req = conn.recv()
        conn.respond(req, {"type": "started", "pid": 42})
        conn.respond(req, out(b"tick\n"))
        kill = recv_until(conn, "sdexec.kill")
        assert kill.json() == {"pid": 42, "signum": 15}
        conn.respond(kill)
        conn.respond(req, {"type": "finished", "status": 15})
        conn.respond(req, errnum=errno.ENODATA)

    seen: list[tuple[str, bytes]] = []

    async def main() -> int:
        async with await Handle.connect(server.uri) as h:
            proc = RemoteProcess(
                h, build_command(["sleep", "9"], env={}), on_output=lambda s, d: seen.append((s, d))
            )
            assert await proc.start() == 42
            await proc.kill(15)
            return await proc.wait()

    with ScriptedServer(short_path(tmp_path), script) as server:
        assert asyncio.run(main()) == 15
    assert seen == [("stdout", b"tick\n")]
