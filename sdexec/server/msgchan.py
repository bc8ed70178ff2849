"""RFC 42 message channels: a ``local://`` socket per msgchan, bridged to its ``uri``.

Theory of operation
-------------------
RFC 42 "Command Object", ``msgchans``: each entry ``{name, uri}`` asks the
server to set ``name`` in the process's environment "to a URI that the
client may connect to", and to carry messages both ways between that
channel and ``uri``.  flux-core spells the key ``msgchan``; both are parsed
by :mod:`sdexec.proto.rfc42`.

Here the process-side URI is ``local://PATH``: a :class:`MsgchanListener`
binds a UNIX stream socket at PATH, in a directory only the server's user
can enter (mode 0700, next to the server's own socket; see
:func:`socket_dir`), before the unit starts, so the variable can go into
the unit's ``Environment=`` and the process needs no exec helper.  The
channel lives as long as the process is known to the server, and no longer
than the server.

Each connection accepted on it becomes one *bridge*, an owned task of the
router (``Router.spawn``):

1. the peer's uid is read with ``SO_PEERCRED``; anyone but the server's own
   user is refused with the EPERM handshake byte, so a msgchan never lends
   the server's identity to another user;
2. a new connection is opened to the msgchan's ``uri`` (``local://`` only)
   and its handshake byte is read; a refusal is passed on to the peer as its
   own handshake byte, and success is answered with 0 (RFC 3 ``local``
   connector, see :mod:`sdexec.proto.framing`);
3. two pumps copy *messages* each way: bytes are cut into frames with
   :meth:`FrameDecoder.feed_parts` and re-encoded unchanged, so a peer that
   breaks the framing is cut off at the bridge, and ``drain()`` carries each
   side's back-pressure to the other.  When either side ends, both are
   closed; the server then sees the bridged client disconnect and cleans up
   after it as after any client.

Credentials: the target stamps the bridge's connection with the server's
uid (the process's uid was checked to be the same in step 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import socket
import tempfile

import structlog

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.base.uri import LOCAL_SCHEME, local_path
from sdexec.broker.router import Router
from sdexec.proto.framing import FrameDecoder, encode_parts_stream
from sdexec.transport.unix import peer_credentials

log = structlog.get_logger("sdexec.msgchan")

#: sun_path holds 108 bytes, NUL included.
SUN_PATH_MAX = 107
READ_SIZE = 65536

_names = itertools.count(1)
_fallback_dir: str | None = None


def socket_dir(server_uri: str | None) -> str:
    """Where msgchan sockets go: ``<server socket>.msgchan``, beside the server's socket.

    The server's socket directory is private to its user
    (:func:`sdexec.transport.unix.prepare_socket_path`).  A server without a
    ``local://`` URI uses a private temporary directory.
    """
    if server_uri is not None and server_uri.startswith(LOCAL_SCHEME):
        return local_path(server_uri) + ".msgchan"
    return _private_tmpdir()


def _private_tmpdir() -> str:
    global _fallback_dir
    if _fallback_dir is None or not os.path.isdir(_fallback_dir):
        _fallback_dir = tempfile.mkdtemp(prefix="sdexec-msgchan-")
    return _fallback_dir


def socket_path(directory: str, serial: int) -> str:
    """The path of one msgchan socket (unique per server pid and serial)."""
    return os.path.join(directory, f"{os.getpid()}.{serial}")


def target_path(uri: str) -> str:
    """The socket a msgchan ``uri`` names: EINVAL unless it is ``local://``."""
    if not uri.startswith(LOCAL_SCHEME):
        raise SdexecError(errno.EINVAL, f"msgchan uri {uri!r}: only local:// URIs are supported")
    return local_path(uri)


def _bind(path: str) -> socket.socket:
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    os.chmod(parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket of an earlier server with the same pid
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


class MsgchanListener:
    """One msgchan: the socket the process connects to, and its bridges."""

    def __init__(self, router: Router, name: str, uri: str, directory: str, unit: str) -> None:
        self.router = router
        self.name = name
        self.target = target_path(uri)
        self.unit = unit
        self.owner_uid = os.getuid()
        path = socket_path(directory, next(_names))
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            path = socket_path(_private_tmpdir(), next(_names))
        self.path = path
        self._sock: socket.socket | None = _bind(path)
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._accept)

    @property
    def uri(self) -> str:
        """What the process finds in its environment variable."""
        return LOCAL_SCHEME + self.path

    def _accept(self) -> None:
        if self._sock is None:
            return
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("msgchan accept failed", name=self.name, error=exc.strerror)
                return
            self.router.spawn(self._bridge(conn), "msgchan bridge")

    def close(self) -> None:
        """Stop listening, remove the socket, and end every bridge."""
        sock, self._sock = self._sock, None
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        for writer in list(self._writers):
            writer.close()

    # --- one bridge ---------------------------------------------------------------------

    async def _bridge(self, conn: socket.socket) -> None:
        try:
            peer_pid, uid, _gid = peer_credentials(conn)
        except OSError:
            conn.close()
            return
        fields = {"msgchan": self.name, "unit": self.unit, "peer_pid": peer_pid}
        if uid != self.owner_uid:
            log.warning("msgchan connection refused", uid=uid, reason="not the owner", **fields)
            _refuse(conn, errno.EPERM)
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        except OSError as exc:
            log.info("msgchan target unreachable", target=self.target, error=exc.strerror, **fields)
            _refuse(conn, exc.errno or errno.ECONNREFUSED)
            return
        try:
            handshake = await up_reader.readexactly(1)
        except (asyncio.IncompleteReadError, OSError):
            handshake = bytes((errno.ECONNRESET,))
        if handshake != b"\0":
            up_writer.close()
            _refuse(conn, handshake[0])
            return
        conn.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=conn)
        writer.write(b"\0")
        pair = (writer, up_writer)
        self._writers.update(pair)
        if self._sock is None:  # closed while we were connecting
            for w in pair:
                w.close()
        log.info("msgchan connected", **fields)
        try:
            async with asyncio.TaskGroup() as tg:
                to_target = tg.create_task(_pump(reader, up_writer, pair))
                to_process = tg.create_task(_pump(up_reader, writer, pair))
        finally:
            for w in pair:
                w.close()
                self._writers.discard(w)
        log.info(
            "msgchan closed",
            to_target=to_target.result(),
            to_process=to_process.result(),
            **fields,
        )


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
) -> int:
    """Copy whole messages from ``reader`` to ``writer``; close both at the end.

    Returns the number of messages copied.
    """
    decoder = FrameDecoder()
    count = 0
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            for parts in decoder.feed_parts(data):
                writer.write(encode_parts_stream(parts))
                count += 1
            await writer.drain()
    except ProtocolError as exc:
        log.info("msgchan framing error", error=exc.message)
    except OSError:
        pass  # the other side is gone: end the bridge
    finally:
        for w in both:
            w.close()
    return count


def _refuse(conn: socket.socket, errnum: int) -> None:
    with contextlib.suppress(OSError):
        conn.setblocking(True)
        conn.send(bytes((errnum & 0xFF or errno.EIO,)))
    conn.close()
