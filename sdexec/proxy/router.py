"""Routing between the proxy's children and its server.

Theory of operation
-------------------
The proxy is a router in the RFC 3/RFC 6 sense, like flux-core's
``flux proxy``.  Its children connect to its private ``local://`` socket
(:class:`sdexec.transport.unix.Connection`, so ``SO_PEERCRED`` and the
handshake byte work as with the server; only the proxy's own uid is
accepted).

Requests from a child go upstream with the child's connection id pushed on
the route stack; the server pushes its own id for the proxy underneath and
copies the stack into every response, so a response from upstream pops the
child's id and goes to that child.  Matchtags are the child's own: the
route makes them unique.  Each request that expects a response is kept in
``pending`` until its final response (an error, or a response without
STREAMING), so that on connection loss every child gets ECONNRESET for what
it was waiting on (flux-core does the same).

Some requests are the proxy's business, as in flux-core's proxy router:

* ``event.subscribe`` / ``event.unsubscribe``: the proxy keeps each child's
  prefixes and one reference-counted upstream subscription per prefix, and
  fans events out to the children whose prefixes match;
* ``service.add`` / ``service.remove``: forwarded as the proxy's own
  request; on success the proxy remembers which child owns the name, sends
  it the requests upstream routes here for that service, and passes its
  responses (routes intact) back upstream.

Both tables are replayed by :meth:`ProxyRouter.renew` after a reconnect.

While the connection is down and the proxy is reconnecting (``hold`` is a
number of seconds), a request from a child is *held*, as ``flux proxy``
holds it, and sent once the connection is back (in the order received);
only the requests that were in flight when it was lost get ECONNRESET.  The
hold is bounded: a request still held ``hold`` seconds after it came, or
one that finds :data:`HOLD_MAX` others already held, gets ECONNRESET; a
child that leaves takes its held requests with it.
When a child disconnects, the proxy sends ``<service>.disconnect``
(NORESPONSE, with the child's route) for every service the child used, so
the server cleans up after it (RFC 6 "Disconnection"), drops the child's
subscriptions and removes its services upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from typing import Any

from sdexec.base.errors import SdexecError, message_of
from sdexec.broker.services import valid_name
from sdexec.client.rpc import RemoteError
from sdexec.proto.message import Message, MsgFlag, MsgType
from sdexec.proxy.upstream import Upstream
from sdexec.transport.unix import Connection

INTERCEPTED = frozenset(("event.subscribe", "event.unsubscribe", "service.add", "service.remove"))
HOLD_SECONDS = 60.0  # the default of ``sdexec proxy --reconnect --hold``
HOLD_MAX = 1024  # requests held at once while the connection is down
LOST = "connection to server lost"


class ProxyRouter:
    """The :class:`~sdexec.transport.unix.Acceptor` for children, and upstream's sink."""

    def __init__(
        self,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        uid: int | None = None,
        *,
        hold: float | None = None,
        hold_max: int = HOLD_MAX,
    ) -> None:
        self.uid = os.getuid() if uid is None else uid
        # Seconds a request waits for a lost connection to come back (None: it
        # fails at once), and how many may wait (see the module docstring).
        self.hold = hold
        self.hold_max = hold_max
        self.held: deque[tuple[float, str, Message]] = deque()  # (when, child id, request)
        self._expiry: asyncio.TimerHandle | None = None
        self._reconnected = asyncio.Event()
        self.spawn = spawn  # run a coroutine owned by the proxy's TaskGroup
        self.upstream: Upstream | None = None
        self.children: dict[str, Connection] = {}
        self.pending: dict[tuple[str, int], Message] = {}  # -> the ECONNRESET response
        self.used: dict[str, set[str]] = {}
        self.child_subs: dict[str, Counter[str]] = {}
        self.upstream_subs: Counter[str] = Counter()
        self.services: dict[str, str] = {}  # service name -> child id

    # --- children (Acceptor) ----------------------------------------------------------

    def accept(self, conn: Connection) -> int:
        if conn.uid != self.uid:
            return errno.EPERM
        self.children[conn.id] = conn
        return 0

    def received(self, conn: Connection, msg: Message) -> None:
        if msg.type == MsgType.REQUEST:
            if msg.topic in INTERCEPTED:
                self.spawn(self._intercept(conn, msg))
            else:
                self._forward(conn, msg)
        elif msg.type == MsgType.RESPONSE and self.upstream is not None:
            self.upstream.send(msg)  # a child's service answering upstream

    def closed(self, conn: Connection) -> None:
        cid = conn.id
        self.children.pop(cid, None)
        for key in [k for k in self.pending if k[0] == cid]:
            del self.pending[key]
        if any(entry[1] == cid for entry in self.held):
            self.held = deque(entry for entry in self.held if entry[1] != cid)
        up = self.upstream
        for name in sorted(self.used.pop(cid, ())):
            if up is not None:
                notice = Message.request(f"{name}.disconnect", flags=MsgFlag.NORESPONSE)
                notice.push_route(cid)
                up.send(notice)
        for prefix, n in self.child_subs.pop(cid, Counter()).items():
            self.upstream_subs[prefix] -= n
            if self.upstream_subs[prefix] <= 0:
                del self.upstream_subs[prefix]
                self.spawn(self._quietly("event.unsubscribe", {"topic": prefix}))
        for name in [n for n, owner in self.services.items() if owner == cid]:
            del self.services[name]
            self.spawn(self._quietly("service.remove", {"service": name}))

    def _forward(self, conn: Connection, msg: Message) -> None:
        up = self.upstream
        if up is None or not up.connected:
            if self.hold is not None and self.hold > 0 and len(self.held) < self.hold_max:
                self._hold(conn, msg)
            elif not msg.noresponse:
                text = LOST if self.hold is None else f"{LOST} (and {len(self.held)} requests wait)"
                conn.send(msg.response(errnum=errno.ECONNRESET, text=text))
            return
        if not msg.noresponse:
            self.pending[(conn.id, msg.matchtag)] = msg.response(errnum=errno.ECONNRESET, text=LOST)
        topic = msg.topic or ""
        if not topic.endswith(".disconnect"):
            self.used.setdefault(conn.id, set()).add(topic.split(".", 1)[0])
        msg.push_route(conn.id)
        up.send(msg)

    # --- held requests (the connection is down) ---------------------------------------

    def _hold(self, conn: Connection, msg: Message) -> None:
        loop = asyncio.get_running_loop()
        self.held.append((loop.time(), conn.id, msg))
        self._schedule_expiry(loop)

    def _schedule_expiry(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._expiry is None and self.held and self.hold is not None:
            self._expiry = loop.call_at(self.held[0][0] + self.hold, self._expire)

    def _expire(self) -> None:
        """Fail the requests held longer than ``hold`` seconds."""
        self._expiry = None
        assert self.hold is not None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.held and self.held[0][0] + self.hold <= now:
            _when, cid, msg = self.held.popleft()
            child = self.children.get(cid)
            if child is not None and not msg.noresponse:
                text = f"{LOST}, and not back within {self.hold:g}s"
                child.send(msg.response(errnum=errno.ECONNRESET, text=text))
        self._schedule_expiry(loop)

    def _release_held(self) -> None:
        """The connection is back: send what was held, in the order it came."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        held, self.held = self.held, deque()
        for _when, cid, msg in held:
            child = self.children.get(cid)
            if child is not None:
                self._forward(child, msg)

    # --- upstream ---------------------------------------------------------------------

    def from_upstream(self, msg: Message) -> None:
        if msg.type == MsgType.RESPONSE:
            cid = msg.pop_route()
            if msg.errnum or not msg.streaming:
                self.pending.pop((cid, msg.matchtag), None)
            child = self.children.get(cid)
            if child is not None:
                child.send(msg)
        elif msg.type == MsgType.EVENT:
            topic = msg.topic or ""
            for cid, subs in self.child_subs.items():
                if any(topic.startswith(p) for p in subs):
                    child = self.children.get(cid)
                    if child is not None:
                        child.send(msg)
        elif msg.type == MsgType.REQUEST:
            owner = self.services.get((msg.topic or "").split(".", 1)[0])
            child = self.children.get(owner) if owner else None
            if child is not None:
                child.send(msg)
            elif not msg.noresponse and self.upstream is not None:
                self.upstream.send(msg.response(errnum=errno.ENOSYS, text="service went away"))

    def lost(self) -> None:
        """The upstream connection is gone: in-flight RPCs get ECONNRESET."""
        self.upstream = None
        self._reconnected.clear()
        pending, self.pending = self.pending, {}
        for (cid, _tag), response in pending.items():
            child = self.children.get(cid)
            if child is not None:
                child.send(response)

    async def renew(self, up: Upstream) -> None:
        """Re-establish subscriptions and services on a new connection, then use it."""
        subscribed: set[str] = set()
        added: set[str] = set()
        # Children may subscribe or register while we wait: go until nothing is new.
        while True:
            prefixes = set(self.upstream_subs) - subscribed
            names = set(self.services) - added
            if not prefixes and not names:
                break
            for prefix in sorted(prefixes):
                await up.rpc("event.subscribe", {"topic": prefix})
                subscribed.add(prefix)
            for name in sorted(names):
                await up.rpc("service.add", {"service": name})
                added.add(name)
        self.upstream = up
        self._reconnected.set()
        self._release_held()

    def close_children(self) -> None:
        for child in list(self.children.values()):
            child.close()

    # --- intercepted requests -----------------------------------------------------------

    async def _intercept(self, conn: Connection, msg: Message) -> None:
        try:
            payload = msg.json()
            handler = {
                "event.subscribe": self._subscribe,
                "event.unsubscribe": self._unsubscribe,
                "service.add": self._service_add,
                "service.remove": self._service_remove,
            }[msg.topic or ""]
            await handler(conn.id, payload)
        except (OSError, ValueError) as exc:
            if not msg.noresponse:
                errnum = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
                conn.send(msg.response(errnum=errnum, text=message_of(exc)))
            return
        if not msg.noresponse:
            conn.send(msg.response(None))

    async def _subscribe(self, cid: str, payload: dict[str, object]) -> None:
        prefix = _field(payload, "topic")
        if self.upstream_subs[prefix] == 0 and self.upstream is not None:
            await self.upstream.rpc("event.subscribe", {"topic": prefix})
        self.upstream_subs[prefix] += 1
        self.child_subs.setdefault(cid, Counter())[prefix] += 1

    async def _unsubscribe(self, cid: str, payload: dict[str, object]) -> None:
        prefix = _field(payload, "topic")
        subs = self.child_subs.get(cid)
        if subs is None or subs[prefix] <= 0:
            raise SdexecError(errno.ENOENT, f"not subscribed to {prefix!r}")
        subs[prefix] -= 1
        if subs[prefix] == 0:
            del subs[prefix]
        self.upstream_subs[prefix] -= 1
        if self.upstream_subs[prefix] <= 0:
            del self.upstream_subs[prefix]
            await self._quietly("event.unsubscribe", {"topic": prefix})

    async def _service_add(self, cid: str, payload: dict[str, object]) -> None:
        name = _field(payload, "service")
        if not valid_name(name):
            raise SdexecError(errno.EINVAL, f"invalid service name {name!r}")
        if name in self.services:
            raise SdexecError(errno.EEXIST, f"service {name} is already registered")
        if self.upstream is None and self.hold:  # held, as other requests are
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.hold):
                    await self._reconnected.wait()
        if self.upstream is None:
            raise SdexecError(errno.ECONNRESET, LOST)
        await self.upstream.rpc("service.add", {"service": name})
        if cid in self.children:
            self.services[name] = cid
        else:  # the child left while we waited
            await self._quietly("service.remove", {"service": name})

    async def _service_remove(self, cid: str, payload: dict[str, object]) -> None:
        name = _field(payload, "service")
        if self.services.get(name) != cid:
            raise SdexecError(errno.ENOENT, f"service {name} is not registered by this client")
        del self.services[name]
        await self._quietly("service.remove", {"service": name})

    async def _quietly(self, topic: str, payload: dict[str, object]) -> None:
        """An own request whose failure does not matter (undoing, cleaning up)."""
        up = self.upstream
        if up is None:
            return
        with contextlib.suppress(RemoteError, SdexecError):
            await up.rpc(topic, payload)


def _field(payload: dict[str, object], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise SdexecError(errno.EPROTO, f"missing '{name}'")
    return value
