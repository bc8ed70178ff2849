"""The proxy's connection to its server, over any transport.

Theory of operation
-------------------
:meth:`Upstream.connect` gets a stream socket from
:func:`sdexec.transport.connector.open_link` (so ``local://``, ``ssh://``,
``tcp://`` and ``pid:`` all work), reads the handshake byte, and from then
on decodes ``local://`` framing into messages.

Two kinds of traffic share the connection.  The proxy's *own* requests
(``attr.get``, ``event.subscribe``, ``service.add`` ... made on the
children's behalf) carry an empty route stack, so their responses come back
with an empty stack and are matched here by matchtag.  Everything else
(responses to children, which carry a child's route id; events; requests
for services children registered) goes to the ``on_message`` callback.
When the connection ends, own RPCs fail with ECONNRESET and :attr:`lost`
is set.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.client.rpc import MATCHTAG_MAX, lost_error, response_payload
from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import Message, MsgType
from sdexec.transport.connector import open_link
from sdexec.transport.link import Link


class Upstream(asyncio.Protocol):
    """One connection to the server (see the module docstring)."""

    def __init__(self, uri: str, on_message: Callable[[Message], None]) -> None:
        self.uri = uri
        self.on_message = on_message
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[int] = loop.create_future()
        self.lost = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.link: Link | None = None
        self._decoder = FrameDecoder()
        self._own: dict[int, asyncio.Future[Message]] = {}
        self._next = 1

    @classmethod
    async def connect(cls, uri: str, on_message: Callable[[Message], None]) -> Upstream:
        """Connect and complete the handshake (SdexecError on failure)."""
        up = cls(uri, on_message)
        link = await asyncio.to_thread(open_link, uri)
        up.link = link
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=link.detach())
            loop = asyncio.get_running_loop()
            await loop.create_unix_connection(lambda: up, sock=sock)
            try:
                status = await up.handshake
            except SdexecError:
                raise link.early_end() or lost_error() from None
            if status:
                raise link.early_end(status) or SdexecError(
                    status, f"server refused the connection: {os.strerror(status)}"
                )
        except BaseException:
            await up.close()
            raise
        return up

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.handshake.done():
            self.handshake.set_result(data[0])
            data = data[1:]
        try:
            messages = self._decoder.feed(data)
        except ProtocolError:
            assert self.transport is not None
            self.transport.abort()
            return
        for msg in messages:
            if msg.type == MsgType.RESPONSE and not msg.routes:
                future = self._own.pop(msg.matchtag, None)
                if future is not None and not future.done():
                    future.set_result(msg)
            else:
                self.on_message(msg)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.handshake.done():
            self.handshake.set_exception(lost_error())
        own, self._own = self._own, {}
        for future in own.values():
            if not future.done():
                future.set_exception(lost_error())
        self.lost.set()

    # --- API ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.lost.is_set()

    def send(self, msg: Message) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(msg))

    async def rpc(self, topic: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """The proxy's own request: one response, matched by matchtag."""
        if not self.connected:
            raise SdexecError(errno.ECONNRESET, "connection to server lost")
        tag = self._next
        while tag in self._own:
            tag = tag % MATCHTAG_MAX + 1
        self._next = tag % MATCHTAG_MAX + 1
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._own[tag] = future
        self.send(Message.request(topic, payload, matchtag=tag))
        return response_payload(await future)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            await self.lost.wait()
        link, self.link = self.link, None
        if link is not None:
            await asyncio.to_thread(link.close)
