"""An asyncio client handle for an sdexec server: RFC 6 RPCs over ``local://``.

Theory of operation
-------------------
:meth:`Handle.connect` opens the server's UNIX socket and reads the one
handshake byte Flux's ``local`` connector expects (0 = accepted, otherwise
an errno).  After that the socket carries RFC 3 messages in ``local://``
framing (:mod:`sdexec.proto.framing`); a lean :class:`asyncio.BufferedProtocol`
receives straight into a :class:`~sdexec.proto.framing.FrameDecoder`'s
buffer and writes encoded requests straight to the transport.

Requests carry an empty route stack (a delimiter and no routes), as the
Flux local connector sends them; the server pushes the connection's identity.
Every request that expects a response gets a matchtag from 1 upward (RFC 6
"Matchtag Field"); a matchtag is only reused once its RPC has completed,
which for a streaming RPC means its final (error, or non-streaming)
response.  ``send`` requests are NORESPONSE with matchtag 0.

Responses are routed by matchtag to a pending :meth:`Handle.rpc` future or
a :class:`Stream`'s queue; responses nobody waits for (and events) are
dropped.  When the connection ends, every pending call fails with
``SdexecError(ECONNRESET)``; a malformed stream fails them with EPROTO.
Cancelling an :meth:`rpc` keeps its matchtag reserved until the server's
response arrives, so a late response can never be mistaken for another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from typing import TYPE_CHECKING, Any

from sdexec.base import uri as _uri
from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.client.rpc import MATCHTAG_MAX, RemoteError, lost_error, response_payload
from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import NODEID_ANY, Message, MsgFlag, MsgType, decode_json_payload

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from sdexec.transport.link import Link

_END = object()  # a Stream queue marker: the stream ended after a final success
# A socket buffer that holds a few stdin writes of 256 KiB: without it (the
# default is about 200 KiB) each write waits for the server to read part of
# the one before, and asyncio moves its whole write buffer along each time.
SEND_BUFFER = 1 << 20

__all__ = ["Handle", "RemoteError", "Stream"]


class _Rpc:
    """A pending single-response RPC."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Message]) -> None:
        self.future = future

    def deliver(self, msg: Message) -> bool:
        if not self.future.done():
            self.future.set_result(msg)
        return True

    def fail(self, exc: SdexecError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Stream:
    """The responses of one streaming RPC, as an async iterator of payloads.

    Iteration yields each success response's JSON payload and stops at the
    ENODATA response that ends an RFC 6 stream (or after a response without
    the STREAMING flag).  Any other error response raises
    :class:`~sdexec.client.rpc.RemoteError`; a lost connection
    SdexecError(ECONNRESET).
    """

    __slots__ = ("_closed", "_done", "_queue", "matchtag", "topic")

    def __init__(self, topic: str, matchtag: int) -> None:
        self.topic = topic
        self.matchtag = matchtag
        self._queue: asyncio.Queue[Message | SdexecError | object] = asyncio.Queue()
        self._done = False
        self._closed = False

    @property
    def done(self) -> bool:
        """True once iteration has reached the end of the stream (or an error)."""
        return self._done

    def close(self) -> None:
        """Stop listening: responses still to come are dropped.

        The matchtag stays reserved until the server ends the stream.
        """
        self._closed = True
        self._done = True

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return response_payload(await self.next_message())

    async def next_message(self) -> Message:
        """The next success response as a message (for decoders of their own).

        Ends and fails like iteration: StopAsyncIteration at the end of the
        stream, RemoteError for an error response.
        """
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, SdexecError):
            self._done = True
            raise item
        assert isinstance(item, Message)
        if item.errnum == errno.ENODATA:
            self._done = True
            raise StopAsyncIteration
        if item.errnum:
            self._done = True
            response_payload(item)  # raises RemoteError
        return item

    # --- called by the Handle -------------------------------------------------

    def deliver(self, msg: Message) -> bool:
        final = msg.errnum != 0 or not msg.streaming
        if not self._closed:
            self._queue.put_nowait(msg)
            if final and msg.errnum == 0:
                self._queue.put_nowait(_END)
        return final

    def fail(self, exc: SdexecError) -> None:
        if not self._closed:
            self._queue.put_nowait(exc)


class _Protocol(asyncio.BufferedProtocol):
    """Bytes in and out for one Handle: the handshake byte, then framed messages.

    Received straight into the frame decoder's buffer (no copy per read),
    in reads as large as the frame being received.
    """

    def __init__(self, handle: Handle) -> None:
        self._handle = handle
        self._decoder = FrameDecoder()
        self._handshake_byte = bytearray(1)
        self.handshake: asyncio.Future[int] = handle._loop.create_future()
        self.lost: asyncio.Future[None] = handle._loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # capped at net.core.wmem_max; best effort
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self.handshake.done():
            return memoryview(self._handshake_byte)  # the handshake byte on its own
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if not self.handshake.done():
            self.handshake.set_result(self._handshake_byte[0])
            return
        try:
            messages = self._decoder.buffer_updated(nbytes)
        except ProtocolError as exc:
            self._handle._fail_all(SdexecError(errno.EPROTO, f"bad data from server: {exc}"))
            assert self.transport is not None
            self.transport.abort()
            return
        for msg in messages:
            self._handle._on_message(msg)

    def eof_received(self) -> bool | None:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(lost_error())
        self._handle._fail_all(lost_error())
        if not self.lost.done():
            self.lost.set_result(None)


class Handle:
    """One connection to an sdexec server.  Create it with :meth:`connect`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str) -> None:
        self._loop = loop
        self.path = path
        self._pending: dict[int, _Rpc | Stream] = {}
        self._next_matchtag = 1
        self._error: SdexecError | None = None
        self._protocol = _Protocol(self)
        self._link: Link | None = None
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._requests: asyncio.Queue[Message] = asyncio.Queue()
        # Set by sdexec.cli.signing: turns a request payload into its RFC 42
        # signed form (it leaves the methods that need no signature alone).
        self.signer: Callable[[str, dict[str, Any] | None], dict[str, Any] | None] | None = None

    @classmethod
    async def connect(cls, uri: str | None = None) -> Handle:
        """Connect to the server named by ``uri`` (default: ``$SDEXEC_URI``).

        ``local://`` (and paths, ``pid:``) connect directly; ``ssh://`` and
        ``tcp://`` go through :func:`sdexec.transport.connector.open_link`.
        Raises SdexecError: ENOENT if the socket does not exist, the server's
        errno if it refuses the connection, ECONNRESET if it hangs up first.
        """
        resolved = _uri.resolve(uri if uri else _uri.default_uri())
        loop = asyncio.get_running_loop()
        link = None
        if resolved.startswith(_uri.LOCAL_SCHEME):
            path = _uri.local_path(resolved)
            handle = cls(loop, path)
            try:
                await loop.create_unix_connection(lambda: handle._protocol, path)
            except FileNotFoundError:
                raise SdexecError(errno.ENOENT, f"server socket {path} was not found") from None
            except OSError as exc:
                num = exc.errno or errno.ECONNREFUSED
                raise SdexecError(num, f"cannot connect to {path}: {os.strerror(num)}") from None
        else:
            from sdexec.transport.connector import open_link

            link = await asyncio.to_thread(open_link, resolved)
            handle = cls(loop, resolved)
            handle._link = link
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=link.detach())
            await loop.create_unix_connection(lambda: handle._protocol, sock=sock)
        try:
            status = await handle._protocol.handshake
        except BaseException as exc:
            early = link.early_end() if link is not None and isinstance(exc, SdexecError) else None
            handle._abort()
            if early is not None:
                raise early from None
            raise
        if status != 0:
            early = link.early_end(status) if link is not None else None
            handle._abort()
            raise early or SdexecError(
                status, f"server refused the connection: {os.strerror(status)}"
            )
        return handle

    # --- requests -------------------------------------------------------------------

    async def rpc(
        self, topic: str, payload: dict[str, Any] | None = None, *, nodeid: int = NODEID_ANY
    ) -> dict[str, Any]:
        """Send a request and return its one response's payload ({} if empty).

        An error response raises :class:`~sdexec.client.rpc.RemoteError`
        (errnum, its text or strerror); a lost connection SdexecError(ECONNRESET).
        """
        future: asyncio.Future[Message] = self._loop.create_future()
        tag = self._register(_Rpc(future))
        payload = self._signed(topic, payload)
        self._write(Message.request(topic, payload, matchtag=tag, nodeid=nodeid))
        return response_payload(await future)

    def stream(
        self, topic: str, payload: dict[str, Any] | None = None, *, nodeid: int = NODEID_ANY
    ) -> Stream:
        """Send a STREAMING request now; iterate the returned :class:`Stream`.

        This is not a coroutine, so the caller knows :attr:`Stream.matchtag`
        (needed for RFC 42 ``write`` requests) before any response arrives.
        """
        self._check_open()
        stream = Stream(topic, 0)
        stream.matchtag = self._register(stream)
        msg = Message.request(
            topic,
            self._signed(topic, payload),
            matchtag=stream.matchtag,
            nodeid=nodeid,
            flags=MsgFlag.STREAMING,
        )
        self._write(msg)
        return stream

    def send(
        self,
        topic: str,
        payload: dict[str, Any] | bytes | None = None,
        *,
        nodeid: int = NODEID_ANY,
    ) -> None:
        """Send a NORESPONSE request (matchtag 0), e.g. ``sdexec.write``.

        ``payload`` is a JSON object, or its NUL-terminated encoding as bytes.
        """
        if self.signer is not None and isinstance(payload, bytes):  # pre-encoded JSON
            payload = decode_json_payload(payload)
        msg = Message.request(
            topic, self._signed(topic, payload), nodeid=nodeid, flags=MsgFlag.NORESPONSE
        )
        self._write(msg)

    def _signed(self, topic: str, payload: Any) -> Any:
        return payload if self.signer is None else self.signer(topic, payload)

    def fileno(self) -> int:
        """The connection's socket (for SO_PEERCRED); -1 once closed."""
        transport = self._protocol.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        return sock.fileno() if sock is not None else -1

    # --- lifetime ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection is gone (closed by either side)."""
        return self._error is not None

    async def close(self) -> None:
        """Close the connection; pending calls fail with ECONNRESET."""
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        if transport is not None:
            await self._protocol.lost
        self._fail_all(lost_error())
        await self._release_link()

    async def _release_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await asyncio.to_thread(link.close)

    # --- events and services -------------------------------------------------------

    async def subscribe(self, prefix: str) -> None:
        """Receive events whose topic starts with ``prefix`` (see :meth:`event`)."""
        await self.rpc("event.subscribe", {"topic": prefix})

    async def unsubscribe(self, prefix: str) -> None:
        await self.rpc("event.unsubscribe", {"topic": prefix})

    async def event(self) -> Message:
        """The next event message (topic, :meth:`Message.json`, sequence)."""
        return await self._events.get()

    async def service_add(self, name: str) -> None:
        """Register service ``name``: requests to ``name.*`` come to :meth:`request`."""
        await self.rpc("service.add", {"service": name})

    async def service_remove(self, name: str) -> None:
        await self.rpc("service.remove", {"service": name})

    async def request(self) -> Message:
        """The next request for a service this client registered."""
        return await self._requests.get()

    def respond(
        self,
        request: Message,
        payload: dict[str, Any] | None = None,
        *,
        errnum: int = 0,
        text: str | None = None,
    ) -> None:
        """Answer a request from :meth:`request` (its routes are kept)."""
        if not request.noresponse:
            self._write(request.response(payload, errnum=errnum, text=text))

    async def __aenter__(self) -> Handle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- internals --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error

    def _register(self, call: _Rpc | Stream) -> int:
        self._check_open()
        tag = self._next_matchtag
        while tag in self._pending:
            tag = tag + 1 if tag < MATCHTAG_MAX else 1
        self._next_matchtag = tag + 1 if tag < MATCHTAG_MAX else 1
        self._pending[tag] = call
        return tag

    def _write(self, msg: Message) -> None:
        self._check_open()
        transport = self._protocol.transport
        assert transport is not None
        transport.write(encode_frame(msg))

    def _on_message(self, msg: Message) -> None:
        if msg.type != MsgType.RESPONSE:
            if msg.type == MsgType.EVENT:
                self._events.put_nowait(msg)
            elif msg.type == MsgType.REQUEST:
                self._requests.put_nowait(msg)
            return
        call = self._pending.get(msg.matchtag)
        if call is not None and call.deliver(msg):
            del self._pending[msg.matchtag]

    def _fail_all(self, exc: SdexecError) -> None:
        if self._error is None:
            self._error = exc
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call.fail(self._error)

    def _abort(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.abort()
        self._fail_all(lost_error())
        link, self._link = self._link, None
        if link is not None:
            link.close()
