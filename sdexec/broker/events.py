"""Event publication and subscriptions (RFC 3 event messages).

Theory of operation
-------------------
A connection subscribes to *topic prefixes* with ``event.subscribe
{"topic": PREFIX}`` and drops them with ``event.unsubscribe``; as in
flux-core, an event matches a subscription when its topic starts with the
prefix (a plain string prefix, so ``""`` matches every event).  A prefix
subscribed twice must be unsubscribed twice.

:meth:`EventBus.publish` stamps each event with the next value of one
monotonically increasing sequence number (RFC 3: ``aux1`` of an event is
its sequence), so a subscriber can tell that it missed events.  Events are
sent, in publication order, to every connection with a matching
subscription; a connection's subscriptions vanish with it.

``event.pub {"topic": T, "payload": OBJ}`` lets the instance owner publish
an event of their own (flux-core's ``flux event pub``).

Guests see only their own events (sdexec.security): an event published for
a uid (a process's lifecycle, ``visible_to``) goes to the trusted uids and
to that uid's connections; any other event to the trusted uids only.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Mapping
from typing import Any

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.broker.request import Handler, Request
from sdexec.proto.message import ROLE_OWNER, Message
from sdexec.transport.unix import Connection


class EventBus:
    """Subscriptions by connection, and the publication sequence."""

    def __init__(
        self,
        owner_uid: int,
        connections: Mapping[str, Connection],
        trusted: frozenset[int] | None = None,
    ) -> None:
        self.owner_uid = owner_uid
        self.trusted = trusted if trusted is not None else frozenset({owner_uid})
        self.connections = connections  # the router's, by connection id
        self.sequence = 0
        self.subscriptions: dict[str, Counter[str]] = {}

    def methods(self) -> dict[str, Handler]:
        """The requests this serves, for the router to register."""
        return {
            "event.subscribe": self.subscribe,
            "event.unsubscribe": self.unsubscribe,
            "event.pub": self.pub,
        }

    @staticmethod
    def _topic(req: Request) -> str:
        topic = req.payload().get("topic")
        if not isinstance(topic, str):
            raise ProtocolError(f"{req.topic}: missing 'topic'")
        return topic

    def subscribe(self, req: Request) -> None:
        prefix = self._topic(req)
        self.subscriptions.setdefault(req.conn.id, Counter())[prefix] += 1
        req.respond(None)

    def unsubscribe(self, req: Request) -> None:
        prefix = self._topic(req)
        subs = self.subscriptions.get(req.conn.id)
        if subs is None or subs[prefix] <= 0:
            raise SdexecError(errno.ENOENT, f"not subscribed to {prefix!r}")
        subs[prefix] -= 1
        if subs[prefix] == 0:
            del subs[prefix]
        req.respond(None)

    def pub(self, req: Request) -> None:
        if not req.rolemask & ROLE_OWNER:
            raise SdexecError(errno.EPERM, "only the instance owner may publish events")
        topic = self._topic(req)
        payload = req.payload().get("payload")
        if payload is not None and not isinstance(payload, dict):
            raise ProtocolError("event.pub: 'payload' must be an object")
        seq = self.publish(topic, payload)
        req.respond({"seq": seq})

    def forget(self, conn_id: str) -> None:
        """A connection went away: drop its subscriptions."""
        self.subscriptions.pop(conn_id, None)

    def publish(
        self, topic: str, payload: dict[str, Any] | None = None, *, visible_to: int | None = None
    ) -> int:
        """Send an event to every matching subscriber allowed to see it; returns its sequence."""
        self.sequence += 1
        msg = Message.event(topic, payload, sequence=self.sequence)
        msg.userid = self.owner_uid
        msg.rolemask = ROLE_OWNER
        connections = self.connections
        trusted = self.trusted
        for conn_id, subs in self.subscriptions.items():
            if any(topic.startswith(prefix) for prefix in subs):
                conn = connections.get(conn_id)
                if conn is not None and (conn.uid in trusted or conn.uid == visible_to):
                    conn.send(msg)
        return self.sequence
