"""systemd socket activation: take the listening socket from ``sdexec.socket``.

Theory of operation
-------------------
With socket activation (sd_listen_fds(3)), systemd creates and binds the
listening socket itself and starts the service on the first connection,
handing the socket over as an inherited file descriptor.  The protocol is
three environment variables:

``LISTEN_PID``
    the pid the fds are meant for; anyone else (a child that inherited the
    environment) must ignore them;
``LISTEN_FDS``
    how many fds are passed, starting at fd 3 (``SD_LISTEN_FDS_START``);
``LISTEN_FDNAMES``
    optional, their names separated by ``:`` (``FileDescriptorName=`` of the
    socket unit; ``sdexec.socket`` names its socket ``local``).

:func:`listen_fds` reads them, marks the fds close-on-exec, and removes the
variables from the environment (as ``sd_listen_fds(1)`` does), so that
nothing this server starts mistakes them for its own.  :func:`local_socket`
picks the ``local`` socket (or the only UNIX stream socket) and returns it
with the path it is bound to, which becomes the server's ``local://`` URI.

Connections that arrived before the server was ready wait in the socket's
backlog, so nothing is lost while the server starts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import MutableMapping

from sdexec.base.errors import SdexecError

LISTEN_FDS_START = 3
LOCAL_NAME = "local"
_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds(
    environ: MutableMapping[str, str] | None = None,
    *,
    pid: int | None = None,
    unset: bool = True,
) -> list[tuple[int, str]]:
    """The (fd, name) pairs systemd passed to this process ([] if none).

    Fds without a name are named ``unknown``, as sd_listen_fds_with_names(3)
    does.  Raises SdexecError(EINVAL) for malformed variables meant for us.
    """
    env = os.environ if environ is None else environ
    try:
        if env.get("LISTEN_PID", "") != str(os.getpid() if pid is None else pid):
            return []
        text = env.get("LISTEN_FDS", "")
        if not text.isdigit():
            raise SdexecError(errno.EINVAL, f"LISTEN_FDS={text!r} is not a number")
        count = int(text)
        names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
        if names and len(names) != count:
            raise SdexecError(
                errno.EINVAL, f"LISTEN_FDNAMES has {len(names)} names for {count} fds"
            )
        names += ["unknown"] * (count - len(names))
        fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
        for fd in fds:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        return list(zip(fds, names, strict=True))
    finally:
        if unset:
            for var in _VARS:
                env.pop(var, None)


def local_socket(
    fds: list[tuple[int, str]], name: str = LOCAL_NAME
) -> tuple[socket.socket, str] | None:
    """The inherited listening socket for ``local://`` and its path, or None.

    The fd named ``name`` wins; otherwise the only UNIX stream socket among
    ``fds``.  EINVAL when the choice is ambiguous or the socket is not a
    UNIX stream socket bound to a path.
    """
    if not fds:
        return None
    named = [fd for fd, n in fds if n == name]
    candidates = named or [fd for fd, _ in fds]
    socks = []
    for fd in candidates:
        sock = socket.socket(fileno=fd)
        if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM:
            socks.append(sock)
        else:
            sock.detach()
    if len(socks) != 1:
        for sock in socks:
            sock.detach()
        raise SdexecError(
            errno.EINVAL,
            f"expected one inherited UNIX stream socket (named {name!r}), found {len(socks)}",
        )
    sock = socks[0]
    path = sock.getsockname()
    if not isinstance(path, str) or not path.startswith("/"):
        sock.detach()
        raise SdexecError(errno.EINVAL, "the inherited socket is not bound to a path")
    return sock, path
