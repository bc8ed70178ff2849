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

A request (:class:`~sdexec.broker.request.Request`) knows its connection
and how to answer; when a connection closes, every registered disconnect
hook is called with its id (RFC 6 "Disconnection").

Events (:mod:`sdexec.broker.events`) and client-registered services
(:mod:`sdexec.broker.services`) are owned by the router, which wires them
in: it registers their methods, hooks their clean-up to disconnection, and
hands them the connection table and, for the client services, a callback
that tells whether a name is a built-in service.  Neither imports the
router.  A request no built-in handler claims is offered to the client
services before ENOSYS, and a response from a client is routed back through
them.  :meth:`Router.publish` sends an event to its subscribers.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from sdexec.base.errors import errnum_of, message_of
from sdexec.broker.events import EventBus
from sdexec.broker.request import Handler, Request
from sdexec.broker.services import ClientServices
from sdexec.proto.message import ROLE_OWNER, ROLE_USER, Message, MsgType
from sdexec.transport.unix import Connection

log = structlog.get_logger("sdexec.router")


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
        #: Called with each connection accepted (sdexec.systemd.migration's kick).
        self.accept_hooks: list[Callable[[Connection], None]] = []
        self._tg: asyncio.TaskGroup | None = None
        # The router's own services: they get what they use, not the router.
        self.events = EventBus(
            owner_uid, self.connections, trusted=frozenset({owner_uid, self.server_uid})
        )
        self.services = ClientServices(owner_uid, self.connections, claimed=self.claimed)
        for service in (self.events, self.services):
            for topic, handler in service.methods().items():
                self.register(topic, handler)
            self.disconnect_hooks.append(service.forget)

    def publish(
        self, topic: str, payload: dict[str, Any] | None = None, *, uid: int | None = None
    ) -> int:
        """Publish an event to its subscribers (a guest's only when ``uid`` is its own)."""
        return self.events.publish(topic, payload, visible_to=uid)

    def attach(self, tg: asyncio.TaskGroup) -> None:
        """Give the router the TaskGroup that owns handler tasks."""
        self._tg = tg

    def register(self, topic: str, handler: Handler, *, streaming_only: bool = False) -> None:
        self.routes[topic] = Route(handler, streaming_only)

    def claimed(self, service: str) -> bool:
        """Whether a registered handler serves a method of ``service``."""
        return any(topic.split(".", 1)[0] == service for topic in self.routes)

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
        for hook in self.accept_hooks:
            hook(conn)
        return 0

    def evict_idle(self) -> str | None:
        """Close the connection idle longest, to make room; returns its id (None: none idle).

        Idle: no request waiting for a response, no event subscription and
        no service of its own.  Guests' connections go before the trusted
        uids'.
        """
        subscribed = self.events.subscriptions
        providers = set(self.services.owners.values())
        idle = [
            c
            for c in self.connections.values()
            if c.pending <= 0 and not subscribed.get(c.id) and c.id not in providers
        ]
        if not idle:
            return None
        trusted = (self.owner_uid, self.server_uid)
        victim = min(idle, key=lambda c: (c.uid in trusted, c.last_active))
        log.warning(
            "idle connection closed to make room",
            uid=victim.uid,
            conn=victim.id,
            idle_for=round(time.monotonic() - victim.last_active, 1),
        )
        self.connections.pop(victim.id, None)
        victim.close()
        return victim.id

    def received(self, conn: Connection, msg: Message) -> None:
        if msg.type == MsgType.RESPONSE:
            self.services.response(conn.id, msg)  # from a client-registered service
            return
        if msg.type != MsgType.REQUEST:
            return
        if conn.stamps_credentials:  # a peer's own claim is never trusted
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
        if route is None and req.topic.endswith(".disconnect") and req.msg.noresponse:
            # RFC 6: a router (sdexec proxy, a Flux broker) tells every service
            # a client used that it left; a service without a disconnect
            # method (attr, state-machine) kept nothing for it.
            return
        if route is None:
            text = (
                f"Unknown method {req.topic}"
                if self.claimed(req.topic.split(".", 1)[0])
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
