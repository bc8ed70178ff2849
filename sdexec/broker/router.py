"""The router: connections in, requests to handlers, responses back (RFC 6).

Theory of operation
-------------------
Every accepted :class:`~sdexec.transport.unix.Connection` is stamped with the
peer's credentials; each request it sends gets ``userid``/``rolemask`` set
here at ingress (a client's own claim is overwritten).  A request's topic
selects a handler by exact match; an unknown topic gets ENOSYS, a
non-streaming request to a streaming-only method gets EPROTO (RFC 6
"Streaming Responses").

Handlers are plain functions ``handler(req) -> None | Awaitable[None]``.
A synchronous handler runs inline (the fast path for ``write``/``list``/
``kill`` bookkeeping); a coroutine is run as a task owned by the router's
TaskGroup.  Either way an exception becomes an RFC 6 error response here,
and only here: an ``OSError`` keeps its errno and message, a ``ValueError``
is EINVAL, anything else is a bug: logged with its traceback, answered EIO.
A request with NORESPONSE never gets one.

A request's *sender* is the connection id followed by the request's route
stack read from the origin outward, so requests relayed by a proxy on behalf
of several children are told apart.  When a connection closes, every
registered disconnect hook is called with its id (RFC 6 "Disconnection").

Events (:mod:`sdexec.broker.events`) and client-registered services
(:mod:`sdexec.broker.services`) hang off the router: a request no built-in
handler claims is offered to the client services before ENOSYS, and a
response from a client is routed back through them.  :meth:`Router.publish`
sends an event to its subscribers.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from sdexec.base.errors import errnum_of, message_of
from sdexec.broker.events import EventBus
from sdexec.broker.services import ClientServices
from sdexec.proto import jsonio
from sdexec.proto.message import ROLE_OWNER, ROLE_USER, Message, MsgType
from sdexec.transport.unix import Connection

log = structlog.get_logger("sdexec.router")

Sender = tuple[str, ...]
Handler = Callable[["Request"], "Awaitable[None] | None"]


class Request:
    """A request being served: its message, where it came from, how to answer."""

    __slots__ = ("_done", "_write", "_write_parsed", "conn", "msg", "signed", "signer")

    def __init__(self, conn: Connection, msg: Message) -> None:
        self.conn = conn
        self.msg = msg
        self._done = False
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
        if self.msg.noresponse or self._done:
            return
        self.conn.send(self.msg.response(payload if payload is not None else None))

    def respond_pieces(self, payload: list[bytes]) -> None:
        """:meth:`respond` with the JSON payload ``b"".join(payload)``, never joined here.

        The hot path of output forwarding: see :meth:`Connection.send_pieces`.
        """
        if self.msg.noresponse or self._done:
            return
        self.conn.send_pieces(self.msg.response(b""), payload)

    def error(self, errnum: int, text: str | None = None) -> None:
        """Send the final error response (ENODATA ends a stream successfully)."""
        if self.msg.noresponse or self._done:
            return
        self._done = True
        self.conn.send(self.msg.response(errnum=errnum, text=text))

    def end(self) -> None:
        """End a response stream successfully (ENODATA)."""
        self.error(errno.ENODATA)

    @property
    def finished(self) -> bool:
        return self._done


@dataclass(slots=True)
class Route:
    handler: Handler
    streaming_only: bool = False


class Router:
    """Dispatches requests from all connections to registered handlers."""

    def __init__(
        self, owner_uid: int, *, allow_guests: bool = False, server_uid: int | None = None
    ) -> None:
        self.owner_uid = owner_uid
        self.server_uid = owner_uid if server_uid is None else server_uid
        self.allow_guests = allow_guests
        # sdexec.security hooks: handshake admission and the authentication gate.
        self.admission: Callable[[Connection], int] | None = None
        self.gate: Callable[[Request], None] | None = None
        self.routes: dict[str, Route] = {}
        self.connections: dict[str, Connection] = {}
        self.disconnect_hooks: list[Callable[[str], None]] = []
        self._tg: asyncio.TaskGroup | None = None
        self.events = EventBus(self)
        self.services = ClientServices(self)

    def publish(self, topic: str, payload: dict[str, Any] | None = None) -> int:
        """Publish an event to its subscribers; returns its sequence number."""
        return self.events.publish(topic, payload)

    def attach(self, tg: asyncio.TaskGroup) -> None:
        """Give the router the TaskGroup that owns handler tasks."""
        self._tg = tg

    def register(self, topic: str, handler: Handler, *, streaming_only: bool = False) -> None:
        self.routes[topic] = Route(handler, streaming_only)

    # --- Acceptor (called by the transport) ---------------------------------------

    def accept(self, conn: Connection) -> int:
        if self.admission is not None:
            errnum = self.admission(conn)
            if errnum:
                return errnum
        elif conn.uid != self.owner_uid and not self.allow_guests:
            log.warning(
                "connection refused",
                uid=conn.uid,
                peer_pid=conn.pid,
                reason="not the instance owner",
            )
            return errno.EPERM
        self.connections[conn.id] = conn
        log.debug("connection accepted", uid=conn.uid, peer_pid=conn.pid, conn=conn.id)
        return 0

    def received(self, conn: Connection, msg: Message) -> None:
        if msg.type == MsgType.RESPONSE:
            self.services.response(conn.id, msg)  # from a client-registered service
            return
        if msg.type != MsgType.REQUEST:
            return
        msg.userid = conn.uid
        trusted = conn.uid in (self.owner_uid, self.server_uid)
        msg.rolemask = ROLE_OWNER if trusted else ROLE_USER
        if self.gate is not None:
            self.gate(Request(conn, msg))  # dispatches once the request passes
        else:
            self.dispatch(Request(conn, msg))

    def closed(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)
        log.debug("connection closed", uid=conn.uid, conn=conn.id)
        for hook in self.disconnect_hooks:
            try:
                hook(conn.id)
            except Exception:
                log.exception("disconnect hook failed", conn=conn.id)

    # --- dispatch ----------------------------------------------------------------------

    def dispatch(self, req: Request) -> None:
        route = self.routes.get(req.topic)
        if route is None and self.services.forward(req):
            return
        if route is None:
            service = req.topic.split(".", 1)[0]
            known = any(t.split(".", 1)[0] == service for t in self.routes)
            text = (
                f"Unknown method {req.topic}"
                if known
                else f"No service matching {req.topic} is registered"
            )
            self._refuse(req, errno.ENOSYS, text)
            return
        if route.streaming_only and not req.streaming:
            self._refuse(req, errno.EPROTO, f"{req.topic} requires a streaming request")
            return
        try:
            result = route.handler(req)
        except Exception as exc:
            self._fail(req, exc)
            return
        if inspect.isawaitable(result):
            assert self._tg is not None, "router has no TaskGroup"
            self._tg.create_task(self._run(req, result))

    def spawn(self, work: Awaitable[None], what: str = "background work") -> None:
        """Run ``work`` as a task owned by the router's TaskGroup; log its failure."""
        assert self._tg is not None, "router has no TaskGroup"
        self._tg.create_task(self._guard(work, what))

    async def _guard(self, work: Awaitable[None], what: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task failed", task=what)

    async def _run(self, req: Request, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(req, exc)

    def refuse(self, req: Request, errnum: int, text: str) -> None:
        """Answer ``req`` with an error before any handler ran, and log it."""
        self._refuse(req, errnum, text)

    def _refuse(self, req: Request, errnum: int, text: str) -> None:
        log.info("request refused", uid=req.userid, topic=req.topic, errnum=errnum, reason=text)
        req.error(errnum, text)

    def _fail(self, req: Request, exc: Exception) -> None:
        if not isinstance(exc, (OSError, ValueError)):
            log.exception("handler crashed", topic=req.topic, uid=req.userid)
            req.error(errno.EIO, f"internal error: {exc.__class__.__name__}")
            return
        errnum = errnum_of(exc)
        text = message_of(exc)
        log.info("request failed", uid=req.userid, topic=req.topic, errnum=errnum, reason=text)
        req.error(errnum, text)
