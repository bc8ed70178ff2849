"""``tcp://HOST:PORT``: RFC 3 messages as ZeroMQ multipart messages, with CURVE.

Theory of operation
-------------------
RFC 3 was written for ZeroMQ: a message's parts (routes, delimiter, topic,
payload, PROTO) travel as the frames of one multipart message, so this
transport needs no framing of its own (:func:`sdexec.proto.message.encode_parts`).

**Server.**  A ROUTER socket is bound to the endpoint, as a CURVE server
with the server's key pair.  Every CURVE handshake is checked by our own
ZAP handler (RFC 27/ZAP on ``inproc://zeromq.zap.01``): the client's public
key must be in the *authorized directory*, which is read again for every
handshake so keys can be added and revoked without a restart.  An accepted
key is answered with its Z85 text as the ZAP ``User-Id``; libzmq attaches
that to every message of the connection, and the uid of the connection is
the one *configured for that key* (the ``uid`` metadata of its file, else
the default uid, normally the server's owner).  A client's own claims
(the userid in PROTO) are never read: the router stamps credentials at
ingress as it does for ``local://``.  A refused handshake is logged
("auth failure") and the client sees ``HANDSHAKE_FAILED_AUTH``.

libzmq in Debian 12 has no ``ZMQ_ROUTER_NOTIFY``, so connections are found
with a socket monitor: each message's source fd (``ZMQ_SRCFD``) names its
connection, and the monitor's ``DISCONNECTED`` event (whose value is that
fd) ends it, which runs the router's disconnect hooks as for ``local://``.
Each connection is a :class:`ZmqPeer`, a :class:`~sdexec.transport.unix.
Connection` whose ``send`` writes to the ROUTER socket instead of a stream.
The sockets are driven from the event loop with ``add_reader`` on their
edge-triggered ``FD``, draining while ``EVENTS`` says POLLIN, and
re-checking after every send (libzmq may consume the edge while sending).

**Client.**  :func:`open_tcp` connects a DEALER socket with the client's
key pair and the server's public key, and waits for the monitor to report
the handshake: success, ``EPERM`` for a refused key, ``ECONNREFUSED`` or
``ETIMEDOUT``.  It then hands the caller one end of a ``socketpair`` and
runs a bridge thread that converts between ``local://`` framing on the
other end and multipart messages, writing the ``local://`` handshake byte
first.  Reconnection is disabled and heartbeats are on, so a lost server
ends the stream instead of being silently retried.

Key files are ZeroMQ's own certificate format (``zmq.auth``): ``NAME.key``
holds the public key (and metadata), ``NAME.key_secret`` both keys.
Clients find their keys in ``$SDEXEC_CURVE_CERT`` (the client's secret
certificate) and ``$SDEXEC_CURVE_SERVER`` (the server's public
certificate), by default ``client.key_secret`` and ``server.key`` in
``$SDEXEC_CURVE_DIR`` (``$XDG_CONFIG_HOME/sdexec/curve``).
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import zmq
import zmq.utils.z85
from zmq.utils.monitor import recv_monitor_message

from sdexec.errors import ProtocolError, SdexecError
from sdexec.proto.framing import FrameDecoder, encode_parts_stream
from sdexec.proto.message import MsgType, decode_parts, encode_parts
from sdexec.transport.link import Link
from sdexec.transport.unix import Acceptor, Connection
from sdexec.uri import parse_tcp

if TYPE_CHECKING:
    from sdexec.proto.message import Message

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"sdexec"
CONNECT_TIMEOUT = 10.0
HEARTBEAT_IVL_MS = 2000
HEARTBEAT_TIMEOUT_MS = 6000
_CHUNK = 256 * 1024


def _readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message is waiting (the FD is edge-triggered: ask, do not assume)."""
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def _fd(sock: zmq.Socket[bytes]) -> int:
    return cast(int, sock.getsockopt(zmq.FD))


# --- key files ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cert:
    """A CURVE certificate: Z85 public key, secret key if present, metadata."""

    public: bytes
    secret: bytes | None
    metadata: dict[str, str]


def read_cert(path: str | Path) -> Cert:
    """Parse a ZeroMQ certificate file (ZPL, as written by ``zmq.auth``)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        num = exc.errno or errno.EIO
        raise SdexecError(num, f"cannot read key file {path}: {os.strerror(num)}") from None
    values: dict[str, str] = {}
    metadata: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):  # Z85 may contain '#'
            continue
        if not line[0].isspace():
            section = line.strip()
            continue
        name, eq, value = line.strip().partition("=")
        if not eq:
            continue
        value = value.strip().strip('"')
        (metadata if section == "metadata" else values)[name.strip()] = value
    public = values.get("public-key", "").encode()
    if len(public) != 40:
        raise SdexecError(errno.EINVAL, f"{path}: no valid public-key")
    secret = values.get("secret-key", "").encode() or None
    return Cert(public, secret, metadata)


def write_keypair(directory: Path, name: str, metadata: dict[str, str]) -> tuple[Path, Path]:
    """Create ``NAME.key`` (mode 0644) and ``NAME.key_secret`` (0600) in ``directory``."""
    public, secret = zmq.curve_keypair()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    meta = "".join(f'    {k} = "{v}"\n' for k, v in metadata.items())
    header = "#   ****  Generated by sdexec keygen  ****\n#   ZeroMQ CURVE certificate\n\n"
    out = []
    for suffix, mode, keys in (
        (".key", 0o644, f'    public-key = "{public.decode()}"\n'),
        (
            ".key_secret",
            0o600,
            f'    public-key = "{public.decode()}"\n    secret-key = "{secret.decode()}"\n',
        ),
    ):
        path = directory / (name + suffix)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as f:
            f.write(f"{header}metadata\n{meta}curve\n{keys}")
        out.append(path)
    return out[0], out[1]


def curve_dir() -> Path:
    """Where a client looks for its keys by default."""
    env = os.environ.get("SDEXEC_CURVE_DIR")
    if env:
        return Path(env)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config, "sdexec", "curve")


# --- client ------------------------------------------------------------------------------------


def open_tcp(uri: str, timeout: float = CONNECT_TIMEOUT) -> Link:
    """Connect to ``tcp://HOST:PORT`` with CURVE; see the module docstring."""
    host, port = parse_tcp(uri)
    cert = read_cert(os.environ.get("SDEXEC_CURVE_CERT") or curve_dir() / "client.key_secret")
    server = read_cert(os.environ.get("SDEXEC_CURVE_SERVER") or curve_dir() / "server.key")
    if cert.secret is None:
        raise SdexecError(errno.EINVAL, "the client certificate has no secret key")
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.curve_publickey = cert.public
    dealer.curve_secretkey = cert.secret
    dealer.curve_serverkey = server.public
    dealer.setsockopt(zmq.RECONNECT_IVL, -1)
    dealer.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    dealer.sndhwm = 0
    dealer.rcvhwm = 0
    if ":" in host:
        dealer.ipv6 = True
        host = f"[{host}]"
    monitor = dealer.get_monitor_socket()
    try:
        dealer.connect(f"tcp://{host}:{port}")
        _await_handshake(monitor, uri, timeout)
    except BaseException:
        monitor.close(0)
        dealer.close(0)
        ctx.term()
        raise
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    bridge = _Bridge(ctx, dealer, monitor, theirs)
    thread = threading.Thread(target=bridge.run, name=f"sdexec-zmq {uri}", daemon=True)
    thread.start()
    return Link(ours, uri, lambda: thread.join(5.0))


def _await_handshake(monitor: zmq.Socket[bytes], uri: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not monitor.poll(int(left * 1000)):
            raise SdexecError(errno.ETIMEDOUT, f"cannot connect to {uri}: timed out")
        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise SdexecError(
                errno.EPERM, f"server {uri} refused the connection: CURVE key not authorized"
            )
        if event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            raise SdexecError(errno.EPROTO, f"cannot connect to {uri}: CURVE handshake failed")
        if event in (zmq.EVENT_CLOSED, zmq.EVENT_DISCONNECTED):
            raise SdexecError(errno.ECONNREFUSED, f"cannot connect to {uri}: Connection refused")


class _Bridge:
    """Moves messages between a ``local://`` stream and a DEALER socket (own thread)."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        dealer: zmq.Socket[bytes],
        monitor: zmq.Socket[bytes],
        stream: _socket.socket,
    ) -> None:
        self.ctx = ctx
        self.dealer = dealer
        self.monitor = monitor
        self.stream = stream
        self.out = bytearray(b"\0")  # the local:// handshake byte: accepted
        self.decoder = FrameDecoder()

    def run(self) -> None:
        try:
            self._loop()
        except (OSError, zmq.ZMQError, ProtocolError):
            pass
        finally:
            self.stream.close()
            self.monitor.close(0)
            self.dealer.close(0)
            self.ctx.term()

    def _loop(self) -> None:
        self.stream.setblocking(False)
        fd = self.stream.fileno()
        poller = zmq.Poller()
        poller.register(self.dealer, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while True:
            poller.register(fd, zmq.POLLIN | (zmq.POLLOUT if self.out else 0))
            for item, ev in poller.poll():
                if item is self.dealer:
                    while _readable(self.dealer):
                        self.out += encode_parts_stream(self.dealer.recv_multipart())
                elif item is self.monitor:
                    event = recv_monitor_message(self.monitor)["event"]
                    if event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                        self._flush_blocking()
                        return
                elif item == fd:
                    if ev & zmq.POLLIN:
                        data = self.stream.recv(_CHUNK)
                        if not data:
                            return
                        for parts in self.decoder.feed_parts(data):
                            self.dealer.send_multipart(parts)
                    if ev & zmq.POLLOUT and self.out:
                        del self.out[: self.stream.send(self.out)]

    def _flush_blocking(self) -> None:
        """The server is gone: hand over what it sent before the stream ends."""
        with contextlib.suppress(OSError):
            self.stream.setblocking(True)
            self.stream.sendall(self.out)


# --- server ---------------------------------------------------------------------------------------


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
        return 0


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

    def send(self, msg: Message) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.listener.send(self.routing_id, encode_parts(msg))


class ZmqListener:
    """The ``tcp://`` server: ROUTER + ZAP handler + monitor, driven by the event loop."""

    def __init__(
        self,
        endpoint: str,
        acceptor: Acceptor,
        server_cert: str | Path,
        authorized_dir: str | Path,
        default_uid: int,
    ) -> None:
        import structlog

        self.log = structlog.get_logger("sdexec.transport.zmq")
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
        while _readable(self.zap):
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
        while _readable(self.router):
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
        while _readable(self.monitor):
            event = recv_monitor_message(self.monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                peer = self.by_fd.get(int(event["value"]))
                if peer is not None:
                    self._closed(peer)

    def _closed(self, peer: ZmqPeer) -> None:
        if self.by_fd.get(peer.fd) is peer:
            del self.by_fd[peer.fd]
        peer.transport = None
        if peer.accepted:
            peer.accepted = False
            self.acceptor.closed(peer)

    def send(self, routing_id: bytes, parts: list[bytes]) -> None:
        try:
            self.router.send_multipart([routing_id, *parts], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.log.debug("tcp send failed", error=str(exc))
        if not self._drain_scheduled:
            # Sending may have consumed the FD's edge for messages already queued.
            self._drain_scheduled = True
            asyncio.get_running_loop().call_soon(self._on_router)

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
        r.sndhwm = 0
        r.rcvhwm = 0
        r.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        r.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        self.monitor = r.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        host, port = parse_tcp(self.endpoint)
        if ":" in host:
            r.ipv6 = True
            host = f"[{host}]"
        try:
            r.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as exc:
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
            loop.add_reader(_fd(sock), fn)
            loop.call_soon(fn)
        try:
            await asyncio.Event().wait()
        finally:
            for sock, _ in handlers:
                loop.remove_reader(_fd(sock))
            for peer in list(self.by_fd.values()):
                self._closed(peer)
            self.monitor.close(0)
            self.router.close(0)
            self.zap.close(0)
            self.ctx.term()
