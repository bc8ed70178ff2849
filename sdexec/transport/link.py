"""A connected stream socket to a server, whatever the transport under it.

:class:`Link` is what :func:`sdexec.transport.connector.open_link` returns
for every URI: the socket the clients speak ``local://`` framing on, and
the clean-up its transport needs (reap the ssh process, join the bridge
thread).  The transports (:mod:`~sdexec.transport.ssh`,
:mod:`~sdexec.transport.zmq`) build one; they are below the connector,
which chooses among them, and this module is below them all.

This module is on the CLI's start-up path: it imports ``_socket``, ``os``
and ``errno`` only.
"""

from __future__ import annotations

import _socket
import errno
import os

from sdexec.base.errors import SdexecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Link:
    """A connected stream socket to a server, and its transport's clean-up."""

    __slots__ = ("_cleanup", "_explain", "sock", "uri")

    def __init__(
        self,
        sock: _socket.socket,
        uri: str,
        cleanup: Callable[[], None] | None = None,
        explain: Callable[[], str | None] | None = None,
    ) -> None:
        self.sock = sock
        self.uri = uri
        self._cleanup = cleanup
        self._explain = explain  # why the stream ended early, in the transport's words

    def early_end(self, status: int | None = None) -> SdexecError | None:
        """The error to report when the stream ended before the handshake byte
        (``status`` None), or the handshake refused with errno ``status``, if
        the transport can say more than that (ssh's or the relay's message)."""
        text = self._explain() if self._explain is not None else None
        return SdexecError(status or errno.ECONNRESET, text) if text else None

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


#: The abstract socket name prefix of a client that is about to exec
#: (``sdexec exec``): the server warms up for it at once (sdexec.systemd.migration).
EXEC_ANNOUNCE = "\0sdexec-exec-"


def connect_local(path: str, announce: str | None = None) -> _socket.socket:
    """A blocking UNIX stream socket connected to ``path`` (handshake not read).

    With ``announce``, the socket is first bound to that abstract name (the
    server reads it as the peer's name); if the name is taken, it is not.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    if announce is not None:
        try:  # noqa: SIM105 - contextlib is not on the CLI's start-up path
            sock.bind(announce)
        except OSError:
            pass
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
