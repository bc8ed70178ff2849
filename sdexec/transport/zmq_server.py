"""``tcp://`` server: a ZeroMQ ROUTER socket with CURVE and our own ZAP handler.

Theory of operation
-------------------
A ROUTER socket is bound to the endpoint as a CURVE server with the
server's key pair; messages are RFC 3 multipart messages (see
:mod:`sdexec.transport.zmq` for the client).  Every CURVE handshake is
checked by our ZAP handler (RFC 27/ZAP on ``inproc://zeromq.zap.01``): the
client's public key must be in the *authorized directory*, which is read
again for every handshake so keys can be added and revoked without a
restart.  An accepted key is answered with its Z85 text as the ZAP
``User-Id``; libzmq attaches that to every message of the connection, and
the uid of the connection is the one *configured for that key* (the
``uid`` metadata of its file, else the default uid, normally the server's
owner).  A client's own claims (the userid in PROTO) are never read: the
router stamps credentials at ingress as it does for ``local://``.  A
refused handshake is logged ("auth failure") and the client sees
``HANDSHAKE_FAILED_AUTH``.  A connection the router refuses (say, a uid
that is not the owner) gets its errno as the answer to every request.

libzmq in Debian 12 has no ``ZMQ_ROUTER_NOTIFY``, so connections are found
with a socket monitor: each message's source fd (``ZMQ_SRCFD``) names its
connection, and the monitor's ``DISCONNECTED`` event (whose value is that
fd) ends it, which runs the router's disconnect hooks as for ``local://``.
Each connection is a :class:`ZmqPeer`, a
:class:`~sdexec.transport.unix.Connection` whose ``send`` writes to the
ROUTER socket instead of a stream.  The sockets are driven from the event
loop with ``add_reader`` on their edge-triggered ``FD``, draining while
``EVENTS`` says POLLIN, and re-checking after every send (libzmq may
consume the edge while sending).

Bounds (the same as ``local://``'s): ``ZMQ_MAXMSGSIZE`` is the server's
``--max-message``, so libzmq drops a peer that announces a larger frame
before it buffers it; the receive high-water mark bounds what libzmq reads
ahead.  Sending uses ``ZMQ_ROUTER_MANDATORY`` and a small send high-water
mark per peer: a peer whose pipe is full makes the send fail with EAGAIN
instead of queueing without end, and what it could not take waits in the
peer's own queue, counted in bytes.  The peer then reports itself not
writable (:meth:`Connection.pause_writing`), so output producers stop
reading the process's pipes, exactly as for a slow ``local://`` reader;
the queue is retried every :data:`RETRY_S` seconds, and writable again once
it is empty.  A queue past ``--max-output-buffer`` closes the connection.

Unauthenticated connections (TCP without a finished CURVE handshake) are
bounded too: libzmq drops one that has not finished within
:data:`HANDSHAKE_MS`, and at most :data:`MAX_HANDSHAKING` may be pending at
once: the monitor reports each accepted connection's fd, and past that
number the newest are shut down at once.  A flood of TCP connections thus
holds a bounded number of descriptors, and the ``local://`` socket and the
processes keep theirs.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import zmq
import zmq.utils.z85

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.base.ratelimit import LogLimiter
from sdexec.base.uri import parse_tcp
from sdexec.proto.framing import DEFAULT_MAX_MESSAGE
from sdexec.proto.message import MsgType, decode_parts, encode_parts
from sdexec.transport.unix import WRITE_HARD_LIMIT, Acceptor, Connection
from sdexec.transport.zmq import (
    HEARTBEAT_IVL_MS,
    HEARTBEAT_TIMEOUT_MS,
    monitor_event,
    read_cert,
    readable,
    socket_fd,
)

if TYPE_CHECKING:
    from sdexec.proto.message import Message

log = structlog.get_logger("sdexec.transport.zmq")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"sdexec"
#: Messages libzmq queues per peer before a send to it fails with EAGAIN.
SEND_HWM = 4
#: Messages libzmq reads ahead per peer.
RECV_HWM = 256
#: How often a peer's queue is retried while its pipe is full.
RETRY_S = 0.02
#: A CURVE handshake not finished in this time closes the connection.
HANDSHAKE_MS = 10_000
#: Connections whose CURVE handshake is not finished, at most.
MAX_HANDSHAKING = 256
_MONITORED = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CLOSED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def _shutdown_fd(fd: int) -> None:
    """Shut down a TCP socket libzmq owns (it then sees EOF and closes it itself)."""
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        with socket.socket(fileno=dup) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _PeerTransport(asyncio.Transport):
    """Just enough of a transport for :class:`Connection`'s bookkeeping."""

    def __init__(self, peer: ZmqPeer) -> None:
        super().__init__()
        self._peer = peer
        self._closing = False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._peer.listener.drop(self._peer)

    def get_write_buffer_size(self) -> int:
        return self._peer.queued_bytes

    # Holding a peer (the security gate's back-pressure) cannot stop one
    # ZeroMQ peer's reads: its messages are queued by the router instead.
    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True


class ZmqPeer(Connection):
    """One CURVE-authenticated client of the ROUTER socket."""

    def __init__(self, listener: ZmqListener, fd: int, routing_id: bytes, uid: int) -> None:
        super().__init__(listener.acceptor)
        self.listener = listener
        self.fd = fd
        self.routing_id = routing_id
        self.uid = uid
        self.pid = 0
        self.refusal = 0  # the acceptor's errno, if it refused this peer
        self.transport = _PeerTransport(self)
        self.queue: collections.deque[list[bytes]] = collections.deque()
        self.queued_bytes = 0

    def send(self, msg: Message) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.listener.send_to(self, encode_parts(msg))


class ZmqListener:
    """The ``tcp://`` server: ROUTER + ZAP handler + monitor, driven by the event loop."""

    def __init__(
        self,
        endpoint: str,
        acceptor: Acceptor,
        server_cert: str | Path,
        authorized_dir: str | Path,
        default_uid: int,
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        write_limit: int = WRITE_HARD_LIMIT,
    ) -> None:
        self.log = log
        self.max_message = max_message
        self.write_limit = write_limit
        self.endpoint = endpoint
        self.acceptor = acceptor
        cert = read_cert(server_cert)
        if cert.secret is None:
            raise SdexecError(errno.EINVAL, f"{server_cert}: no secret-key (use NAME.key_secret)")
        self.cert = cert
        self.authorized_dir = Path(authorized_dir)
        self.default_uid = default_uid
        self.key_uid: dict[bytes, int] = {}
        self.by_fd: dict[int, ZmqPeer] = {}
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.zap = self.ctx.socket(zmq.REP)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.monitor: zmq.Socket[bytes] | None = None
        self._drain_scheduled = False
        self.bound = ""
        self.blocked: set[ZmqPeer] = set()  # peers whose pipe was full
        self._retry: asyncio.TimerHandle | None = None
        self.handshaking: dict[int, None] = {}  # fds accepted, handshake pending (oldest first)
        self.shed = 0  # connections shut down past MAX_HANDSHAKING
        self._shed_log = LogLimiter(10.0)

    # --- authorization ----------------------------------------------------------------

    def authorized(self) -> dict[bytes, tuple[int, str]]:
        """Public key -> (uid, key file name), read from the authorized directory."""
        keys: dict[bytes, tuple[int, str]] = {}
        try:
            paths = sorted(self.authorized_dir.glob("*.key"))
        except OSError:
            return keys
        for path in paths:
            try:
                cert = read_cert(path)
                uid = int(cert.metadata.get("uid", self.default_uid))
            except (OSError, ValueError):
                self.log.warning("ignoring unreadable key file", path=str(path))
                continue
            keys[cert.public] = (uid, path.name)
        return keys

    def _on_zap(self) -> None:
        while readable(self.zap):
            req = self.zap.recv_multipart()
            version, request_id, _domain, address, _identity, mechanism = req[:6]
            key = zmq.utils.z85.encode(req[6]) if mechanism == b"CURVE" and len(req) > 6 else b""
            entry = self.authorized().get(key) if key else None
            if entry is None:
                self.log.warning(
                    "auth failure", address=address.decode(errors="replace"), key=key.decode()
                )
                reply = [version, request_id, b"400", b"key not authorized", b"", b""]
            else:
                uid, name = entry
                self.key_uid[key] = uid
                self.log.info("auth", address=address.decode(errors="replace"), key=name, uid=uid)
                reply = [version, request_id, b"200", b"OK", key, b""]
            self.zap.send_multipart(reply)

    # --- messages ----------------------------------------------------------------------

    def _on_router(self) -> None:
        self._drain_scheduled = False
        while readable(self.router):
            frames = self.router.recv_multipart(copy=False)
            self._received(frames)

    def _received(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            return
        last = frames[-1]
        fd = int(last.get(zmq.SRCFD))
        peer = self.by_fd.get(fd)
        routing_id = frames[0].bytes
        if peer is None or peer.routing_id != routing_id:
            if peer is not None:  # the fd was reused by a new connection
                self._closed(peer)
            peer = self._new_peer(fd, routing_id, str(last.get("User-Id")).encode())
            if peer is None:
                return
        try:
            msg = decode_parts([f.bytes for f in frames[1:]])
        except ProtocolError as exc:
            self.log.warning("protocol error from tcp peer", conn=peer.id, error=exc.message)
            return
        if not peer.accepted:
            if msg.type == MsgType.REQUEST and not msg.noresponse:
                num = peer.refusal
                text = f"server refused the connection: {os.strerror(num)}"
                self.send(routing_id, encode_parts(msg.response(errnum=num, text=text)))
            return
        self.acceptor.received(peer, msg)

    def _new_peer(self, fd: int, routing_id: bytes, key: bytes) -> ZmqPeer | None:
        uid = self.key_uid.get(key)
        if uid is None:
            return None  # no ZAP-approved identity: cannot happen with CURVE on
        peer = ZmqPeer(self, fd, routing_id, uid)
        self.by_fd[fd] = peer
        peer.refusal = self.acceptor.accept(peer)
        peer.accepted = peer.refusal == 0
        return peer

    def _on_monitor(self) -> None:
        assert self.monitor is not None
        while readable(self.monitor):
            event, value = monitor_event(self.monitor)
            if event == zmq.EVENT_ACCEPTED:
                self.handshaking[value] = None
                if len(self.handshaking) > MAX_HANDSHAKING:
                    self._shed(value)
            elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                self.handshaking.pop(value, None)
                peer = self.by_fd.get(value)
                if peer is not None:
                    self._closed(peer)
            else:  # the handshake is over, one way or the other
                self.handshaking.pop(value, None)

    def _shed(self, fd: int) -> None:
        """Too many unfinished handshakes: shut this new connection down (libzmq closes it)."""
        self.handshaking.pop(fd, None)
        self.shed += 1
        _shutdown_fd(fd)
        held = self._shed_log.allow()
        if held is not None:
            self.log.warning(
                "too many unauthenticated tcp connections; closing new ones",
                limit=MAX_HANDSHAKING,
                closed=self.shed,
            )

    def _closed(self, peer: ZmqPeer) -> None:
        if self.by_fd.get(peer.fd) is peer:
            del self.by_fd[peer.fd]
        self.blocked.discard(peer)
        peer.queue.clear()
        peer.queued_bytes = 0
        peer.transport = None
        if peer.accepted:
            peer.accepted = False
            self.acceptor.closed(peer)

    def send(self, routing_id: bytes, parts: list[bytes]) -> bool:
        """Send now; False if the peer's pipe is full (EAGAIN) or it is gone."""
        try:
            self.router.send_multipart([routing_id, *parts], zmq.NOBLOCK)
            sent = True
        except zmq.Again:
            sent = False
        except zmq.ZMQError as exc:  # EHOSTUNREACH: that peer is gone
            self.log.debug("tcp send failed", error=str(exc))
            return True  # nothing to keep for it
        if not self._drain_scheduled:
            # Sending may have consumed the FD's edge for messages already queued.
            self._drain_scheduled = True
            asyncio.get_running_loop().call_soon(self._on_router)
        return sent

    def send_to(self, peer: ZmqPeer, parts: list[bytes]) -> None:
        """Send to ``peer``, or queue behind what it has not taken yet."""
        if not peer.queue and self.send(peer.routing_id, parts):
            return
        peer.queue.append(parts)
        peer.queued_bytes += sum(len(p) for p in parts)
        if peer.queued_bytes > self.write_limit:
            self.log.warning(
                "output limit exceeded, closing connection",
                uid=peer.uid,
                conn=peer.id,
                buffered=peer.queued_bytes,
                limit=self.write_limit,
            )
            self.disconnect(peer)
            return
        if peer not in self.blocked:
            self.blocked.add(peer)
            peer.pause_writing()  # output producers stop reading pipes for it
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._retry is None and self.blocked:
            self._retry = asyncio.get_running_loop().call_later(RETRY_S, self._flush_blocked)

    def _flush_blocked(self) -> None:
        self._retry = None
        for peer in list(self.blocked):
            while peer.queue:
                parts = peer.queue[0]
                if not self.send(peer.routing_id, parts):
                    break
                peer.queue.popleft()
                peer.queued_bytes -= sum(len(p) for p in parts)
            if not peer.queue:
                self.blocked.discard(peer)
                peer.resume_writing()
        self._schedule_retry()

    def disconnect(self, peer: ZmqPeer) -> None:
        """Close one peer's connection: forget it, and shut its TCP socket down."""
        fd = peer.fd
        self._closed(peer)
        if fd >= 0:
            _shutdown_fd(fd)

    def drop(self, peer: ZmqPeer) -> None:
        """Forget a peer the server closes (ZeroMQ has no per-peer close)."""
        self._closed(peer)

    # --- lifetime ------------------------------------------------------------------------------

    def bind(self) -> str:
        """Bind the ZAP handler and the ROUTER socket; returns the bound endpoint."""
        self.zap.bind(ZAP_ENDPOINT)
        r = self.router
        r.linger = 0
        r.curve_server = True
        r.curve_publickey = self.cert.public
        assert self.cert.secret is not None
        r.curve_secretkey = self.cert.secret
        r.zap_domain = ZAP_DOMAIN
        r.sndhwm = SEND_HWM
        r.rcvhwm = RECV_HWM
        r.setsockopt(zmq.MAXMSGSIZE, self.max_message)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        r.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        r.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        self.monitor = r.get_monitor_socket(_MONITORED)
        host, port = parse_tcp(self.endpoint)
        if ":" in host:
            r.ipv6 = True
            host = f"[{host}]"
        try:
            r.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as exc:
            self.monitor.close(0)
            r.close(0)
            self.zap.close(0)
            self.ctx.term()
            raise SdexecError(
                exc.errno or errno.EADDRINUSE, f"cannot listen on {self.endpoint}: {exc.strerror}"
            ) from None
        self.bound = str(r.getsockopt_string(zmq.LAST_ENDPOINT))
        return self.bound

    async def run(self) -> None:
        """Serve until cancelled (owned by the daemon's TaskGroup)."""
        loop = asyncio.get_running_loop()
        assert self.monitor is not None
        handlers = (
            (self.zap, self._on_zap),
            (self.router, self._on_router),
            (self.monitor, self._on_monitor),
        )
        for sock, fn in handlers:
            loop.add_reader(socket_fd(sock), fn)
            loop.call_soon(fn)
        try:
            await asyncio.Event().wait()
        finally:
            if self._retry is not None:
                self._retry.cancel()
            for sock, _ in handlers:
                loop.remove_reader(socket_fd(sock))
            for peer in list(self.by_fd.values()):
                self._closed(peer)
            self.monitor.close(0)
            self.router.close(0)
            self.zap.close(0)
            self.ctx.term()
