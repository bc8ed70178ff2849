"""Client-registered services: ``service.add`` / ``service.remove`` (RFC 6 routing).

Theory of operation
-------------------
A client (the instance owner) registers a service name with ``service.add
{"service": NAME}``.  From then on a request whose topic is ``NAME.<method>``
(and that no built-in handler claims) is *forwarded* to that client: the
requester's connection id is pushed on the request's route stack, exactly as
a Flux broker does for a module or a proxy.  The provider answers with
ordinary responses, which carry the route stack back; the router pops the
top route, finds the requester's connection, and sends the response there
with the stack it originally had.  Requests through a proxy therefore keep
the proxy's own route ids underneath ours.

Every forwarded request that expects responses is remembered until its final
response (an error, or a response without STREAMING): only a response that
matches such an entry is routed, so a client cannot inject responses into
another's stream, and when a provider disconnects its services vanish and
the requests it still owed get ENOSYS.  When a requester disconnects, each
provider it used gets ``NAME.disconnect`` (NORESPONSE) with the requester's
route, as RFC 6 "Disconnection" asks.

Errors: EEXIST for a name already registered or claimed by a built-in
service, EINVAL for an invalid name, ENOENT to remove a name one does not
own, EPERM for a guest.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.broker.request import Handler, Request
from sdexec.proto.message import ROLE_OWNER, Message, MsgFlag, MsgType
from sdexec.transport.unix import Connection

_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_+:-]{0,127}")

log = structlog.get_logger("sdexec.services")

PendingKey = tuple[str, tuple[str, ...], int]  # (provider conn, routes as sent, matchtag)


@dataclass(slots=True)
class _Provider:
    names: set[str] = field(default_factory=set)
    pending: dict[PendingKey, Message] = field(default_factory=dict)


def valid_name(name: object) -> bool:
    """A service name: one topic component (no dot), printable ASCII, <= 128 bytes."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


class ClientServices:
    """The table of client-registered services and their in-flight requests."""

    def __init__(
        self,
        owner_uid: int,
        connections: Mapping[str, Connection],
        *,
        claimed: Callable[[str], bool],
    ) -> None:
        self.owner_uid = owner_uid
        self.connections = connections  # the router's, by connection id
        self.claimed = claimed  # whether a name is a built-in service
        self.owners: dict[str, str] = {}  # service name -> provider conn id
        self.providers: dict[str, _Provider] = {}
        self.used: dict[str, set[str]] = {}  # requester conn id -> names it used

    def methods(self) -> dict[str, Handler]:
        """The requests this serves, for the router to register."""
        return {"service.add": self.add, "service.remove": self.remove}

    # --- registration ----------------------------------------------------------------

    def _name(self, req: Request) -> str:
        name = req.payload().get("service")
        if name is None:
            raise ProtocolError(f"{req.topic}: missing 'service'")
        if not valid_name(name):
            raise SdexecError(errno.EINVAL, f"invalid service name {name!r}")
        assert isinstance(name, str)
        return name

    def add(self, req: Request) -> None:
        if not req.rolemask & ROLE_OWNER:
            raise SdexecError(errno.EPERM, "only the instance owner may register services")
        name = self._name(req)
        if name in self.owners or self.claimed(name):
            raise SdexecError(errno.EEXIST, f"service {name} is already registered")
        self.owners[name] = req.conn.id
        self.providers.setdefault(req.conn.id, _Provider()).names.add(name)
        log.info("service added", service=name, uid=req.userid, conn=req.conn.id)
        req.respond(None)

    def remove(self, req: Request) -> None:
        name = self._name(req)
        if self.owners.get(name) != req.conn.id:
            raise SdexecError(errno.ENOENT, f"service {name} is not registered by this client")
        del self.owners[name]
        self.providers[req.conn.id].names.discard(name)
        log.info("service removed", service=name, uid=req.userid, conn=req.conn.id)
        req.respond(None)

    # --- routing ----------------------------------------------------------------------

    def forward(self, req: Request) -> bool:
        """Send ``req`` to the client providing its service; False if there is none."""
        name = req.topic.split(".", 1)[0]
        provider_id = self.owners.get(name)
        if provider_id is None:
            return False
        provider = self.connections.get(provider_id)
        if provider is None:
            return False
        msg = req.msg
        msg.push_route(req.conn.id)
        if not msg.noresponse:
            key = (provider_id, tuple(msg.routes or ()), msg.matchtag)
            self.providers[provider_id].pending[key] = msg
        if not req.topic.endswith(".disconnect"):
            self.used.setdefault(req.conn.id, set()).add(name)
        provider.send(msg)
        return True

    def response(self, conn_id: str, msg: Message) -> None:
        """A response from a provider: route it back to its requester."""
        provider = self.providers.get(conn_id)
        if provider is None:
            return
        key = (conn_id, tuple(msg.routes or ()), msg.matchtag)
        request = provider.pending.get(key)
        if request is None:
            return  # not a request we forwarded to this client: drop it
        if msg.errnum or not msg.streaming:
            del provider.pending[key]
        requester = self.connections.get(msg.pop_route())
        if requester is not None:
            requester.send(msg)

    # --- disconnection ----------------------------------------------------------------

    def forget(self, conn_id: str) -> None:
        """A connection went away: as a provider, as a requester, or both."""
        provider = self.providers.pop(conn_id, None)
        if provider is not None:
            for name in provider.names:
                if self.owners.get(name) == conn_id:
                    del self.owners[name]
                    log.info("service removed", service=name, conn=conn_id, reason="disconnect")
            for request in provider.pending.values():
                response = request.response(
                    errnum=errno.ENOSYS, text=f"service {request.topic} went away"
                )
                requester = self.connections.get(response.pop_route())
                if requester is not None:
                    requester.send(response)
        for name in self.used.pop(conn_id, ()):
            provider_conn = self.connections.get(self.owners.get(name, ""))
            if provider_conn is None:
                continue
            notice = Message(
                MsgType.REQUEST,
                topic=f"{name}.disconnect",
                flags=MsgFlag.NORESPONSE,
                routes=[conn_id],
                userid=self.owner_uid,
                rolemask=ROLE_OWNER,
            )
            provider_conn.send(notice)
