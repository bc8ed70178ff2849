"""Client side of every transport: a URI in, a stream socket speaking ``local://`` out.

Theory of operation
-------------------
Both clients (the blocking CLI client and the asyncio :class:`Handle`, and
the proxy) speak one wire protocol: the handshake byte, then RFC 3
messages in ``local://`` framing over a stream socket.  :func:`open_link`
gives them such a socket (a :class:`~sdexec.transport.link.Link`) whatever
the URI's transport, as a Flux connector does for its scheme:

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
is only "how to get a byte stream to the server".  :meth:`Link.close
<sdexec.transport.link.Link.close>` closes the socket and releases what
keeps the stream alive.

The ``sdexec exec`` command connects first, before it imports the client
(:func:`open_early`): the server then knows a request is coming while the
command is still starting, and warms up for it (see
:mod:`sdexec.systemd.migration`); an ssh connection is started meanwhile.

This module is on the CLI's start-up path: it imports the link and the URI
rules only; the ssh and zmq modules are imported for their schemes.
"""

from __future__ import annotations

import errno
import os

from sdexec.base import uri as _uri
from sdexec.base.errors import SdexecError
from sdexec.transport.link import EXEC_ANNOUNCE, Link, connect_local

# Links opened by open_early, each for the next open_link of its URI.
_early: dict[str | None, Link] = {}


def open_early(uri: str | None = None) -> None:
    """Open the link that the next ``open_link(uri)`` returns, now, for an exec.

    A ``local://`` socket is named as :data:`~sdexec.transport.link.EXEC_ANNOUNCE`
    says: the server warms up at once for a client that will exec, and only
    for one.  A failure is left for that call to report (it tries again).
    """
    if uri in _early:
        return
    try:
        _early[uri] = open_link(uri, exec_soon=True)
    except Exception:  # an SdexecError, or an OSError from a transport
        return


def open_link(uri: str | None = None, *, exec_soon: bool = False) -> Link:
    """Connect to the server named by ``uri`` (default: :func:`sdexec.base.uri.default_uri`).

    The handshake byte is left for the caller to read.  A link that
    :func:`open_early` opened for the same ``uri`` is returned as it is.
    """
    early = _early.pop(uri, None)
    if early is not None:
        return early
    resolved = _uri.resolve(uri if uri else _uri.default_uri())
    if resolved.startswith(_uri.SSH_SCHEME):
        from sdexec.transport.ssh import open_ssh

        return open_ssh(resolved)
    if resolved.startswith(_uri.TCP_SCHEME):
        from sdexec.transport.zmq import open_tcp

        return open_tcp(resolved)
    announce = f"{EXEC_ANNOUNCE}{os.getpid()}" if exec_soon else None
    return Link(connect_local(_uri.local_path(resolved), announce), resolved)


def check_client(uri: str) -> None:
    """Raise SdexecError if this side cannot even try to reach ``uri``: what is
    wrong here (no CURVE keys for tcp://, no ssh command), not at the server.

    A many-rank command checks its ranks' URIs with this before it starts
    anything, so a configuration error of the head node is one error, not
    every rank unreachable.
    """
    resolved = _uri.resolve(uri)
    if resolved.startswith(_uri.TCP_SCHEME):
        from sdexec.transport.zmq import client_keys

        client_keys()
    elif resolved.startswith(_uri.SSH_SCHEME):
        import shutil

        from sdexec.transport.ssh import ssh_argv

        command = ssh_argv(resolved)[0]
        if shutil.which(command) is None:
            raise SdexecError(errno.ENOENT, f"the ssh command {command!r} was not found")
