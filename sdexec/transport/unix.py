"""``local://`` server transport: a UNIX stream socket speaking Flux framing.

Theory of operation
-------------------
On accept, the peer's uid is read with ``SO_PEERCRED`` (never taken from the
peer's own claims) and handed to the :class:`Acceptor`, which answers with
an errno or 0.  That errno is written as the one handshake byte; a refused
peer is closed at once.  After that, bytes are fed to a
:class:`~sdexec.proto.framing.FrameDecoder` and whole messages are passed up.
A framing error closes only this connection.

Back-pressure: the asyncio transport calls ``pause_writing`` when its write
buffer passes the high-water mark; the connection records that and tells the
listeners registered with :meth:`Connection.on_writable`, so output
producers stop reading their pipes until the peer catches up.

Hostile peers (sdexec.security): while the write buffer is above the
high-water mark the connection also stops *reading* and stops dispatching
requests it has already decoded, so a client that sends requests and never
reads the responses cannot make the server queue more than about one
buffer's worth for it; and a buffer that still grows past ``write_limit``
(producers that ignore back-pressure) closes the connection.  Other layers
may pause reading too (:meth:`Connection.hold`); reading resumes when no
one holds it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import stat
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.proto.framing import (
    DEFAULT_MAX_MESSAGE,
    FrameDecoder,
    encode_frame,
    encode_frame_pieces,
)
from sdexec.proto.message import Message

log = structlog.get_logger("sdexec.transport")

WRITE_HIGH_WATER = 1 << 20
# A socket buffer that holds a whole output response (512 KiB of data, more as
# JSON or base64): one send per message instead of several, each waiting for
# the client to read.  The kernel default (about 200 KiB) is smaller.
SEND_BUFFER = 1 << 20
WRITE_LOW_WATER = 256 << 10
#: A write buffer larger than this closes the connection.
WRITE_HARD_LIMIT = 8 << 20
_OUTPUT_HOLD = "output"
_UCRED = struct.Struct("3i")


class Acceptor(Protocol):
    """The layer above: the router."""

    def accept(self, conn: Connection) -> int: ...
    def received(self, conn: Connection, msg: Message) -> None: ...
    def closed(self, conn: Connection) -> None: ...


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a UNIX socket peer."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def peer_name(sock: socket.socket) -> str:
    """The name a UNIX socket peer bound its socket to ("" if none).

    An abstract name (``"\\0..."``) comes back from the kernel as bytes.
    """
    try:
        name = sock.getpeername()
    except OSError:
        return ""
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return name if isinstance(name, str) else ""


class Connection(asyncio.Protocol):
    """One accepted client."""

    #: The router stamps this connection's uid and role on each request.  A
    #: peer that relays requests others made, with credentials it verified
    #: itself (the Flux broker), says False.
    stamps_credentials = True

    def __init__(
        self,
        acceptor: Acceptor,
        max_message: int = DEFAULT_MAX_MESSAGE,
        write_limit: int = WRITE_HARD_LIMIT,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.acceptor = acceptor
        self.decoder = FrameDecoder(max_message)
        self.transport: asyncio.Transport | None = None
        self.uid = -1
        self.gid = -1
        self.pid = 0
        #: The name the peer bound its socket to ("" if none; see connect_local).
        self.peer_name = ""
        self.accepted = False
        self.writable = True
        self.write_limit = write_limit
        self._writable_event = asyncio.Event()
        self._writable_event.set()
        self._writable_listeners: list[Callable[[bool], None]] = []
        self._holds: set[str] = set()
        self._backlog: collections.deque[Message] = collections.deque()
        self._fd = -1  # the socket, for writev past an empty transport buffer
        #: Requests that still owe a response, and when the peer last sent
        #: anything: what makes a connection idle (the router's eviction).
        self.pending = 0
        self.last_active = time.monotonic()

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError):  # capped at net.core.wmem_max; best effort
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._fd = sock.fileno()
        try:
            self.pid, self.uid, self.gid = peer_credentials(sock)
            self.peer_name = peer_name(sock)
        except OSError:
            transport.abort()
            return
        errnum = self.acceptor.accept(self)
        transport.write(bytes((errnum & 0xFF,)))
        if errnum:
            transport.close()
            return
        self.accepted = True

    def data_received(self, data: bytes) -> None:
        if not self.accepted:
            return
        self.last_active = time.monotonic()
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            log.warning(
                "protocol error, closing connection", uid=self.uid, conn=self.id, error=exc.message
            )
            self.close()
            return
        self._backlog.extend(messages)
        self._dispatch_backlog()

    def _dispatch_backlog(self) -> None:
        backlog = self._backlog
        received = self.acceptor.received
        while backlog and self.writable and self.accepted:
            received(self, backlog.popleft())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fd = -1
        self._backlog.clear()
        self._writable_event.set()  # wake anyone waiting to write: there is nobody to wait for
        if self.accepted:
            self.accepted = False
            self.acceptor.closed(self)

    def pause_writing(self) -> None:
        self.writable = False
        self.hold(_OUTPUT_HOLD)
        self._writable_event.clear()
        for fn in list(self._writable_listeners):
            fn(False)

    def resume_writing(self) -> None:
        self.writable = True
        self._writable_event.set()
        for fn in list(self._writable_listeners):
            fn(True)
        self.unhold(_OUTPUT_HOLD)
        self._dispatch_backlog()

    def hold(self, reason: str) -> None:
        """Stop reading from the peer until :meth:`unhold` with the same reason."""
        if not self._holds and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._holds.add(reason)

    def unhold(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if not self._holds and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # --- API ------------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_frame(msg))
            self._check_limit(transport)

    def send_pieces(self, msg: Message, payload: list[bytes]) -> None:
        """:meth:`send` ``msg`` carrying ``b"".join(payload)``, without joining it.

        ``msg.payload`` is a placeholder.  While nothing waits in the
        transport's buffer, the frame goes to the socket with one ``writev``
        (output forwarding: the data is not copied into a frame first), and
        only what the socket did not take is handed to the transport.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._fd < 0 or transport.get_write_buffer_size():
            msg.payload = b"".join(payload)
            self.send(msg)
            return
        buffers = encode_frame_pieces(msg, payload)
        try:
            sent = os.writev(self._fd, buffers)
        except OSError:  # full (EAGAIN), or broken: the transport's write finds out
            sent = 0
        for i, buf in enumerate(buffers):
            if sent < len(buf):  # the socket is full: the transport queues the rest
                rest: list[bytes | memoryview] = [memoryview(buf)[sent:], *buffers[i + 1 :]]
                transport.write(b"".join(rest))
                self._check_limit(transport)
                return
            sent -= len(buf)

    def _check_limit(self, transport: asyncio.Transport) -> None:
        if transport.get_write_buffer_size() > self.write_limit:
            log.warning(
                "output limit exceeded, closing connection",
                uid=self.uid,
                conn=self.id,
                buffered=transport.get_write_buffer_size(),
                limit=self.write_limit,
            )
            transport.abort()

    async def wait_writable(self) -> None:
        """Return once the peer has caught up (or the connection is gone)."""
        await self._writable_event.wait()

    def on_writable(self, fn: Callable[[bool], None]) -> None:
        self._writable_listeners.append(fn)

    def remove_on_writable(self, fn: Callable[[bool], None]) -> None:
        with contextlib.suppress(ValueError):
            self._writable_listeners.remove(fn)

    @property
    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def prepare_socket_path(path: str, *, dir_mode: int = 0o700) -> None:
    """Create the socket's directory (mode ``dir_mode``) and remove a stale socket.

    An existing directory gets ``dir_mode`` too when it is the socket's own:
    ours, not sticky, and holding nothing but this socket.  Any other (/run,
    /tmp, a home directory) is left as it is: a socket put straight into
    /run must not take everyone else's access to /run away.
    """
    p = Path(path)
    parent = p.parent
    if not parent.exists():
        parent.mkdir(mode=dir_mode, parents=True)
    st_dir = os.stat(parent)
    if (
        st_dir.st_uid == os.geteuid()
        and not st_dir.st_mode & stat.S_ISVTX
        and set(os.listdir(parent)) <= {p.name}
    ):
        os.chmod(parent, dir_mode)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SdexecError(17, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(p))
    except OSError:
        p.unlink()  # stale: nobody listens
    else:
        raise SdexecError(98, f"another server is listening on {path}")
    finally:
        probe.close()


async def listen_local(
    path: str,
    acceptor: Acceptor,
    *,
    sock: socket.socket | None = None,
    max_message: int = DEFAULT_MAX_MESSAGE,
    write_limit: int = WRITE_HARD_LIMIT,
    public: bool = False,
    socket_owner: int | None = None,
) -> asyncio.Server:
    """Listen on ``path`` (or an inherited listening ``sock``) for Flux clients.

    The socket is 0600 in a 0700 directory, or 0666 in a 0755 directory when
    ``public`` (guests allowed).  ``socket_owner``, another uid that must be
    able to connect (an instance owner who is not the server's uid), gets the
    0600 socket chowned to it in a 0711 directory when the server is root,
    and a public socket otherwise.  Who may really connect is always the
    acceptor's call, at the handshake.
    """
    loop = asyncio.get_running_loop()
    if sock is None:
        chown = socket_owner is not None and not public and os.geteuid() == 0
        public = public or (socket_owner is not None and not chown)
        dir_mode = 0o755 if public else 0o711 if chown else 0o700
        prepare_socket_path(path, dir_mode=dir_mode)
        old = os.umask(0o111 if public else 0o177)
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
        finally:
            os.umask(old)
        if chown and socket_owner is not None:
            os.chown(path, socket_owner, -1)
        sock.listen(1024)
    return await loop.create_unix_server(
        lambda: Connection(acceptor, max_message, write_limit), sock=sock, backlog=1024
    )
