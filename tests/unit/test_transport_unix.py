"""local:// server connections: frames written in pieces (sdexec.transport.unix)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from sdexec.proto.framing import FrameDecoder
from sdexec.proto.message import Message, MsgFlag
from sdexec.transport.unix import Connection, prepare_socket_path


class Acceptor:
    def accept(self, conn: Connection) -> int:
        return 0

    def received(self, conn: Connection, msg: Message) -> None:
        pass

    def closed(self, conn: Connection) -> None:
        pass


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


def request() -> Message:
    req = Message.request("sdexec.exec", {}, matchtag=7, flags=MsgFlag.STREAMING)
    req.push_route("conn-1")
    return req


async def serve_pair() -> tuple[Connection, socket.socket]:
    """A Connection on one end of a socket pair; the test reads the other."""
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    loop = asyncio.get_running_loop()
    conn = Connection(Acceptor())
    await loop.create_unix_connection(lambda: conn, sock=ours)
    theirs.setblocking(True)
    assert theirs.recv(1) == b"\0"  # the handshake byte
    theirs.setblocking(False)
    return conn, theirs


async def read_messages(sock: socket.socket, count: int) -> list[Message]:
    loop = asyncio.get_running_loop()
    decoder = FrameDecoder()
    out: list[Message] = []
    while len(out) < count:
        data = await loop.sock_recv(sock, 65536)
        assert data
        out += decoder.feed(data)
    return out


def test_pieces_arrive_as_the_frame_of_the_joined_payload() -> None:
    async def main() -> None:
        conn, theirs = await serve_pair()
        req = request()
        big = os.urandom(3 << 20)  # far more than the socket takes at once
        pieces = [b'{"data":"', big, b'"}\0']
        conn.send_pieces(req.response(b""), pieces)
        assert conn.buffered > 0  # the socket took part; the transport holds the rest
        conn.send(req.response({"after": 1}))  # queued behind the rest, in order
        conn.send_pieces(req.response(b""), [b'{"small":', b"1}\0"])
        got = await read_messages(theirs, 3)
        assert got[0] == req.response(b"".join(pieces))
        assert got[1].json() == {"after": 1}
        assert got[2].payload == b'{"small":1}\0'
        conn.close()
        theirs.close()

    run(main())


def test_a_closed_connection_sends_nothing() -> None:
    async def main() -> None:
        conn, theirs = await serve_pair()
        conn.close()
        await asyncio.sleep(0)
        conn.send_pieces(request().response(b""), [b"{}\0"])  # no error
        theirs.close()

    run(main())


def test_the_sockets_own_directory_gets_its_mode(tmp_path: Path) -> None:
    own = tmp_path / "sdexec"
    own.mkdir(mode=0o755)
    prepare_socket_path(str(own / "local"), dir_mode=0o700)
    assert stat.S_IMODE(own.stat().st_mode) == 0o700


def test_a_shared_directory_keeps_its_mode(tmp_path: Path) -> None:
    """A socket put straight into /run must not take /run away from everyone else."""
    shared = tmp_path / "run"
    shared.mkdir(mode=0o755)
    (shared / "other-daemon.pid").touch()
    prepare_socket_path(str(shared / "sdexec.sock"), dir_mode=0o700)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_a_missing_directory_is_made_with_the_mode(tmp_path: Path) -> None:
    prepare_socket_path(str(tmp_path / "a" / "b" / "local"), dir_mode=0o711)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o711
