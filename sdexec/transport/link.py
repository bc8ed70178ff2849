"""Client side of every transport: a URI in, a stream socket speaking ``local://`` out.

Theory of operation
-------------------
Both clients (the blocking CLI client and the asyncio :class:`Handle`, and
the proxy) speak one wire protocol: the handshake byte, then RFC 3
messages in ``local://`` framing over a stream socket.  :func:`open_link`
gives them such a socket whatever the URI's transport:

``local://PATH``
    the server's UNIX socket itself;
``ssh://...``
    one end of a ``socketpair``; the other end is the stdin and stdout of
    an OpenSSH client running ``sdexec relay PATH`` on the remote host,
    which passes bytes through unchanged (:mod:`sdexec.transport.ssh`);
``tcp://...``
    one end of a ``socketpair``; a bridge thread moves messages between
    the other end and a ZeroMQ DEALER socket with CURVE
    (:mod:`sdexec.transport.zmq`), and writes the handshake byte itself
    once the CURVE handshake has succeeded.

So framing, matchtags and the handshake stay in one place, and a transport
is only "how to get a byte stream to the server".  :meth:`Link.close`
closes the socket and releases what keeps the stream alive (it reaps the
ssh process, joins the bridge thread).

This module is on the CLI's start-up path: it imports ``_socket``, ``os``
and ``errno`` only; the ssh and zmq modules are imported for their schemes.
"""

from __future__ import annotations

import _socket
import errno
import os

from sdexec.base import uri as _uri
from sdexec.base.errors import SdexecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Link:
    """A connected stream socket to a server, and its transport's clean-up."""

    __slots__ = ("_cleanup", "sock", "uri")

    def __init__(
        self, sock: _socket.socket, uri: str, cleanup: Callable[[], None] | None = None
    ) -> None:
        self.sock = sock
        self.uri = uri
        self._cleanup = cleanup

    def detach(self) -> int:
        """Give up the socket's fd (for asyncio, which wraps its own socket)."""
        return self.sock.detach()

    def close(self) -> None:
        """Close the socket (if still ours) and release the transport."""
        if self.sock.fileno() >= 0:
            self.sock.close()
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()


def connect_local(path: str) -> _socket.socket:
    """A blocking UNIX stream socket connected to ``path`` (handshake not read)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise SdexecError(errno.ENOENT, f"server socket {path} was not found") from None
    except OSError as exc:
        sock.close()
        num = exc.errno or errno.ECONNREFUSED
        raise SdexecError(num, f"cannot connect to {path}: {os.strerror(num)}") from None
    return sock


def open_link(uri: str | None = None) -> Link:
    """Connect to the server named by ``uri`` (default: :func:`sdexec.base.uri.default_uri`).

    The handshake byte is left for the caller to read.
    """
    resolved = _uri.resolve(uri if uri else _uri.default_uri())
    if resolved.startswith(_uri.SSH_SCHEME):
        from sdexec.transport.ssh import open_ssh

        return open_ssh(resolved)
    if resolved.startswith(_uri.TCP_SCHEME):
        from sdexec.transport.zmq import open_tcp

        return open_tcp(resolved)
    return Link(connect_local(_uri.local_path(resolved)), resolved)
