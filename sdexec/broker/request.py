"""A request being served: its message, its connection, and how to answer it (RFC 6).

A :class:`Request` is what every handler gets, from the router's built-in
services (:mod:`sdexec.broker.events`, :mod:`sdexec.broker.services`) up to
the RFC 42 service.  It answers on the connection the request came in on;
after the final error response (ENODATA ends a stream successfully) nothing
more is sent.  A request with NORESPONSE never gets a response.

A request's *sender* is the connection id followed by the request's route
stack read from the origin outward, so requests relayed by a proxy on behalf
of several children are told apart.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any

from sdexec.proto import jsonio
from sdexec.proto.message import Message
from sdexec.transport.unix import Connection

Sender = tuple[str, ...]
Handler = Callable[["Request"], "Awaitable[None] | None"]


class Request:
    """A request being served: its message, where it came from, how to answer."""

    __slots__ = ("_done", "_write", "_write_parsed", "conn", "msg", "signed", "signer")

    def __init__(self, conn: Connection, msg: Message) -> None:
        self.conn = conn
        self.msg = msg
        self._done = bool(msg.noresponse)
        if not self._done:
            conn.pending += 1  # until its last response (see Connection.pending)
        self._write: tuple[int, str, bytes, bool] | None = None
        self._write_parsed = False
        # Set by sdexec.security.gate for a verified RFC 42 signed request:
        # the signature JSON object (the authoritative payload) and the signer.
        self.signed: dict[str, Any] | None = None
        self.signer: int | None = None

    @property
    def topic(self) -> str:
        return self.msg.topic or ""

    @property
    def userid(self) -> int:
        return self.msg.userid

    @property
    def rolemask(self) -> int:
        return self.msg.rolemask

    @property
    def matchtag(self) -> int:
        return self.msg.matchtag

    @property
    def streaming(self) -> bool:
        return self.msg.streaming

    @property
    def sender(self) -> Sender:
        routes = self.msg.routes or []
        return (self.conn.id, *reversed(routes))

    @property
    def connected(self) -> bool:
        return self.conn.transport is not None

    def payload(self) -> dict[str, Any]:
        if self.signed is not None:
            return self.signed
        return self.msg.json()  # type: ignore[no-any-return]

    def fast_write(self) -> tuple[int, str, bytes, bool] | None:
        """The payload read by :func:`sdexec.proto.jsonio.parse_write`, parsed once.

        (matchtag, stream, data, eof) of an RFC 42 ``write`` in the layout
        clients write, for both the security gate and the service: stdin's
        hot path.  None for any other payload (read it with :meth:`payload`).
        """
        if not self._write_parsed:
            self._write_parsed = True
            if self.msg.payload is not None:
                self._write = jsonio.parse_write(self.msg.payload)
        return self._write

    def respond(self, payload: dict[str, Any] | bytes | None = None) -> None:
        """Send a success response (several, for a streaming request).

        ``payload`` is a JSON object, or its NUL-terminated encoding as bytes.
        """
        if self._done:
            return
        if not self.msg.streaming:  # RFC 6: one response ends a non-streaming request
            self._finish()
        self.conn.send(self.msg.response(payload if payload is not None else None))

    def respond_pieces(self, payload: list[bytes]) -> None:
        """:meth:`respond` with the JSON payload ``b"".join(payload)``, never joined here.

        The hot path of output forwarding: see :meth:`Connection.send_pieces`.
        """
        if self._done:
            return
        if not self.msg.streaming:
            self._finish()
        self.conn.send_pieces(self.msg.response(b""), payload)

    def error(self, errnum: int, text: str | None = None) -> None:
        """Send the final error response (ENODATA ends a stream successfully)."""
        if self._done:
            return
        self._finish()
        self.conn.send(self.msg.response(errnum=errnum, text=text))

    def _finish(self) -> None:
        self._done = True
        self.conn.pending -= 1

    def end(self) -> None:
        """End a response stream successfully (ENODATA)."""
        self.error(errno.ENODATA)

    @property
    def finished(self) -> bool:
        return self._done
