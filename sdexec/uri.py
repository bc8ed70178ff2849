"""Server URIs: where a client finds an sdexec server.

Theory of operation
-------------------
A server is named by a URI, as Flux names its brokers (``FLUX_URI``):

``local://PATH``
    A UNIX stream socket on this machine (RFC 3 framing, see
    :mod:`sdexec.proto.framing`).  This is the only scheme the client speaks
    today.
``ssh://[user@]host[:port]/PATH``, ``tcp://HOST:PORT``
    Passed through unchanged for the transports that implement them.

A client that is not told which server to use reads ``$SDEXEC_URI`` (which
the server sets in the environment of every process it runs), and falls back
to the per-user default socket.  :func:`resolve` also turns the shorthands
people type into URIs: a bare absolute path, or ``pid:PID`` (the server of
the process PID, read from its environment, as ``flux uri pid:`` does).

This module is imported on the CLI's start-up path: it imports only ``os``,
``errno`` and the error type.
"""

from __future__ import annotations

import errno
import os

from sdexec.errors import SdexecError

LOCAL_SCHEME = "local://"
URI_ENV = "SDEXEC_URI"
_PASSTHROUGH = ("ssh://", "tcp://")


def default_local_path() -> str:
    """The default server socket path for the calling user.

    ``$XDG_RUNTIME_DIR/sdexec/local`` when XDG_RUNTIME_DIR is set, else
    ``/run/sdexec/local`` for root, else ``/tmp/sdexec-<uid>/local``.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "sdexec", "local")
    uid = os.getuid()
    if uid == 0:
        return "/run/sdexec/local"
    return f"/tmp/sdexec-{uid}/local"


def default_uri() -> str:
    """``$SDEXEC_URI`` if set (and not empty), else ``local://`` + the default path."""
    uri = os.environ.get(URI_ENV)
    if uri:
        return uri
    return LOCAL_SCHEME + default_local_path()


def resolve(target: str) -> str:
    """Turn what a user typed into a server URI.

    ``local://PATH``, ``ssh://...`` and ``tcp://...`` are returned unchanged;
    an absolute path becomes ``local://PATH``; ``pid:PID`` is the
    ``SDEXEC_URI`` in the environment of process PID.  Anything else raises
    ``SdexecError(EINVAL)``.
    """
    if target.startswith(LOCAL_SCHEME):
        local_path(target)  # validate
        return target
    if target.startswith(_PASSTHROUGH):
        return target
    if target.startswith("/"):
        return LOCAL_SCHEME + target
    if target.startswith("pid:"):
        uri = _uri_of_pid(target[4:])
        if uri.startswith("pid:"):
            raise SdexecError(errno.EINVAL, f"Unable to resolve {target} to a URI")
        return resolve(uri)
    raise SdexecError(errno.EINVAL, f"Unable to resolve {target} to a URI")


def local_path(uri: str) -> str:
    """The socket path of a ``local://PATH`` URI (EINVAL for any other URI)."""
    if not uri.startswith(LOCAL_SCHEME) or len(uri) == len(LOCAL_SCHEME):
        raise SdexecError(errno.EINVAL, f"{uri} is not a local:// URI")
    return uri[len(LOCAL_SCHEME) :]


def socket_path(uri: str | None = None) -> str:
    """The UNIX socket a client connects to for ``uri`` (default: :func:`default_uri`).

    Resolves the URI first.  ``ssh://`` and ``tcp://`` have no local socket:
    EPROTONOSUPPORT until their transports exist.
    """
    resolved = resolve(uri if uri else default_uri())
    if resolved.startswith(_PASSTHROUGH):
        scheme = resolved.split(":", 1)[0]
        raise SdexecError(errno.EPROTONOSUPPORT, f"{scheme}:// URIs are not supported yet")
    return local_path(resolved)


def _uri_of_pid(text: str) -> str:
    if not text.isdigit():
        raise SdexecError(errno.EINVAL, f"Unable to resolve pid:{text} to a URI")
    try:
        with open(f"/proc/{int(text)}/environ", "rb") as f:
            environ = f.read()
    except FileNotFoundError:
        raise SdexecError(errno.ESRCH, f"pid:{text}: no such process") from None
    except OSError as exc:
        raise SdexecError(exc.errno or errno.EIO, f"pid:{text}: {exc.strerror}") from None
    prefix = URI_ENV.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix) and len(entry) > len(prefix):
            return entry[len(prefix) :].decode("utf-8", "surrogateescape")
    raise SdexecError(errno.ENOENT, f"pid:{text}: {URI_ENV} is not set in its environment")
