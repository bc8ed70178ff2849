"""The Flux broker as one connection of the server's router.

Theory of operation
-------------------
Under ``sdexec serve`` every client has a connection of its own.  Inside a
Flux instance the broker is the only peer: it routes every client's request
to this module, from any rank, with the client's route stack and the
credentials it stamped (userid, rolemask).  :class:`FluxLink` is that one
peer, shaped like a :class:`~sdexec.transport.unix.Connection`, so the router,
the service and the processes above it are the same code as in the
standalone server:

* requests arrive through :meth:`received` as encoded messages and are
  decoded by the same codec as ``local://`` frames;
* the router keeps the broker's credentials instead of stamping its own
  (``stamps_credentials`` is False): Flux authenticated the sender;
* responses leave through :meth:`send`, carrying the request's route stack,
  which the broker pops to reach the client;
* clients are told apart by their route (the router's ``sender``), and the
  broker says when one goes away with ``<service>.disconnect``.

Policy the C module applies before its handlers, and so do we: on rank 0 a
request that did not come from this broker's own clients (no LOCAL role) is
refused with EPERM, for the methods that touch processes.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import structlog

from sdexec.base.errors import ProtocolError
from sdexec.proto.framing import HEADER_SIZE, encode_frame, split_parts
from sdexec.proto.message import Message, decode_parts
from sdexec.transport.unix import Acceptor, Connection

log = structlog.get_logger("sdexec.flux")

ROLE_LOCAL = 4
#: Methods that a rank-0 module serves only to its own broker's clients.
LOCAL_ONLY_ON_RANK0 = frozenset({"exec", "write", "kill", "wait", "list", "attach", "logs"})
RANK0_REFUSAL = "Remote sdexec requests are not allowed on rank 0"

Sender = Callable[[bytes], None]


class _BrokerTransport:
    """Just enough of an asyncio transport for :class:`Connection`'s bookkeeping."""

    def __init__(self) -> None:
        self._closing = False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class FluxLink(Connection):
    """Every client of the instance, as one connection to the router."""

    stamps_credentials = False

    def __init__(
        self, acceptor: Acceptor, send: Sender, *, service: str, rank: int, owner: int
    ) -> None:
        super().__init__(acceptor)
        self._send = send
        self.service = service
        self.rank = rank
        self.uid = owner
        self.gid = -1
        self.pid = 0
        self.transport = _BrokerTransport()  # type: ignore[assignment]
        self.accepted = True
        # Requests that came before the server was ready (the broker marks a
        # module as running as soon as Flux's reactor first runs).
        self._early: list[bytes] | None = []

    def open(self) -> None:
        """The server is ready: serve what came early, then everything as it comes."""
        early, self._early = self._early, None
        for encoded in early or ():
            self.received_encoded(encoded)

    def attach(self) -> int:
        """Register with the router (its admission sees the instance owner)."""
        return self.acceptor.accept(self)

    def received_encoded(self, encoded: bytes) -> None:
        """A request from the broker, as its RFC 3 encoding."""
        if self._early is not None:
            self._early.append(encoded)
            return
        try:
            msg = decode_parts(split_parts(encoded))
        except ProtocolError as exc:
            log.warning("undecodable message from the broker", error=exc.message)
            return
        method = (msg.topic or "").removeprefix(self.service + ".")
        if self.rank == 0 and method in LOCAL_ONLY_ON_RANK0 and not msg.rolemask & ROLE_LOCAL:
            log.info("request refused", uid=msg.userid, topic=msg.topic, reason=RANK0_REFUSAL)
            if not msg.noresponse:
                self.send(msg.response(errnum=errno.EPERM, text=RANK0_REFUSAL))
            return
        self.acceptor.received(self, msg)

    def send(self, msg: Message) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self._send(encode_frame(msg)[HEADER_SIZE:])
        except OSError as exc:
            log.warning("cannot send to the broker", topic=msg.topic, error=str(exc))

    def send_pieces(self, msg: Message, payload: list[bytes]) -> None:
        msg.payload = b"".join(payload)
        self.send(msg)

    def close(self) -> None:
        """The module is going: every client is gone with it."""
        transport = self.transport
        if transport is None:
            return
        transport.close()
        self.transport = None
        self.accepted = False
        self.acceptor.closed(self)
