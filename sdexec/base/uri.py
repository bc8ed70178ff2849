"""Server URIs: where a client finds an sdexec server.

Theory of operation
-------------------
A server is named by a URI, as Flux names its brokers (``FLUX_URI``):

``local://PATH``
    A UNIX stream socket on this machine (RFC 3 framing, see
    :mod:`sdexec.proto.framing`).
``ssh://[user@]host[:port]/PATH``
    OpenSSH to ``host``, running ``sdexec relay PATH`` there, which bridges
    its stdio to that socket (:mod:`sdexec.transport.ssh`).
``tcp://HOST:PORT``
    ZeroMQ with CURVE authentication and encryption
    (:mod:`sdexec.transport.zmq`).

A client that is not told which server to use reads ``$SDEXEC_URI`` (which
the server sets in the environment of every process it runs), and falls back
to the per-user default socket.  :func:`resolve` also turns the shorthands
people type into URIs: a bare absolute path, or ``pid:PID`` (the server of
the process PID, read from its environment, as ``flux uri pid:`` does).
Other schemes come from Python entry points in the group
``sdexec.uri_resolvers``: the entry point named ``SCHEME`` is a callable
that takes the whole target (``SCHEME:REST``) and returns a URI, which is
resolved again (as ``flux uri`` plugins do).  Entry points are only looked
at for a scheme this module does not know, so the common path stays cheap.

This module is imported on the CLI's start-up path: it imports only ``os``,
``errno`` and the error type.
"""

from __future__ import annotations

import errno
import os

from sdexec.base.errors import SdexecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

LOCAL_SCHEME = "local://"
URI_ENV = "SDEXEC_URI"
FLUX_URI_ENV = "FLUX_URI"
SSH_SCHEME = "ssh://"
TCP_SCHEME = "tcp://"
_PASSTHROUGH = (SSH_SCHEME, TCP_SCHEME)
RESOLVER_GROUP = "sdexec.uri_resolvers"
_MAX_DEPTH = 8


def default_local_path() -> str:
    """The default server socket path for the calling user.

    ``/run/sdexec/local`` (the system service's) for root, whatever its
    environment: a root ssh login has an XDG_RUNTIME_DIR too.  For anyone
    else ``$XDG_RUNTIME_DIR/sdexec/local`` when XDG_RUNTIME_DIR is set (the
    user service's), else ``/tmp/sdexec-<uid>/local``.
    """
    uid = os.getuid()
    if uid == 0:
        return "/run/sdexec/local"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "sdexec", "local")
    return f"/tmp/sdexec-{uid}/local"


#: The broker socket of a Flux system instance on its node (flux-core's
#: ``flux.service`` sets ``local-uri`` to it), which its own commands use
#: when ``FLUX_URI`` is not set.
FLUX_SYSTEM_SOCKET = "/run/flux/local"


def system_instance_uri() -> str | None:
    """The Flux system instance of this node, when its broker's socket is there."""
    if os.path.exists(FLUX_SYSTEM_SOCKET):
        return LOCAL_SCHEME + FLUX_SYSTEM_SOCKET
    return None


def default_uri() -> str:
    """``$SDEXEC_URI`` if set (and not empty); else, inside a Flux instance,
    ``$FLUX_URI`` (its broker routes to the instance's sdexec service); else
    ``local://`` + the default path when a server listens there; else the
    node's Flux system instance, as for flux's own commands (an operator's
    shell on a node has no ``FLUX_URI``); else the default path."""
    uri = os.environ.get(URI_ENV) or os.environ.get(FLUX_URI_ENV)
    if uri:
        return uri
    path = default_local_path()
    if not os.path.exists(path):
        system = system_instance_uri()
        if system is not None:
            return system
    return LOCAL_SCHEME + path


def resolve(target: str, _depth: int = 0) -> str:
    """Turn what a user typed into a server URI.

    ``local://PATH``, ``ssh://...`` and ``tcp://...`` are checked and returned
    unchanged; an absolute path becomes ``local://PATH``; ``pid:PID`` is the
    ``SDEXEC_URI`` in the environment of process PID; other schemes go to
    the resolver entry points.  Anything else raises ``SdexecError(EINVAL,
    "Unable to resolve TARGET to a URI")``.
    """
    if _depth > _MAX_DEPTH:
        raise SdexecError(errno.ELOOP, f"Unable to resolve {target} to a URI: too many levels")
    if target.startswith(LOCAL_SCHEME):
        local_path(target)  # validate
        return target
    if target.startswith(SSH_SCHEME):
        parse_ssh(target)
        return target
    if target.startswith(TCP_SCHEME):
        parse_tcp(target)
        return target
    if target.startswith("/"):
        return LOCAL_SCHEME + target
    if target.startswith("pid:"):
        uri = _uri_of_pid(target[4:])
        if uri.startswith("pid:"):
            raise SdexecError(errno.EINVAL, f"Unable to resolve {target} to a URI")
        return resolve(uri, _depth + 1)
    scheme, sep, _rest = target.partition(":")
    if sep and scheme:
        resolver = _plugin(scheme)
        if resolver is not None:
            return resolve(resolver(target), _depth + 1)
    raise SdexecError(errno.EINVAL, f"Unable to resolve {target} to a URI")


def _plugin(scheme: str) -> Callable[[str], str] | None:
    from importlib.metadata import entry_points  # only for unknown schemes

    for ep in entry_points(group=RESOLVER_GROUP, name=scheme):
        fn = ep.load()
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    return None


def parse_ssh(uri: str) -> tuple[str | None, str, int | None, str]:
    """``ssh://[user@]host[:port]/PATH`` as (user, host, port, PATH); EINVAL if malformed."""
    rest = uri[len(SSH_SCHEME) :]
    authority, slash, path = rest.partition("/")
    user, at, hostport = authority.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):  # [v6]:port
        end = hostport.find("]")
        host = hostport[1:end] if end > 0 else ""
        tail = hostport[end + 1 :] if end > 0 else ""
        if tail.startswith(":"):
            port = _port(uri, tail[1:])
    elif ":" in hostport:
        host, _, p = hostport.rpartition(":")
        port = _port(uri, p)
    if not slash or not path or not host or (at and not user):
        raise SdexecError(errno.EINVAL, f"Unable to resolve {uri} to a URI")
    return (user or None), host, port, "/" + path


def parse_tcp(uri: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` as (HOST, PORT); EINVAL if malformed."""
    rest = uri[len(TCP_SCHEME) :].rstrip("/")
    host, colon, p = rest.rpartition(":")
    if not colon or not host or "/" in rest:
        raise SdexecError(errno.EINVAL, f"Unable to resolve {uri} to a URI")
    return host.strip("[]"), _port(uri, p)


def _port(uri: str, text: str) -> int:
    if text.isascii() and text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    raise SdexecError(errno.EINVAL, f"Unable to resolve {uri} to a URI: bad port {text!r}")


def local_path(uri: str) -> str:
    """The socket path of a ``local://PATH`` URI (EINVAL for any other URI)."""
    if not uri.startswith(LOCAL_SCHEME) or len(uri) == len(LOCAL_SCHEME):
        raise SdexecError(errno.EINVAL, f"{uri} is not a local:// URI")
    return uri[len(LOCAL_SCHEME) :]


def socket_path(uri: str | None = None) -> str:
    """The UNIX socket a client connects to for ``uri`` (default: :func:`default_uri`).

    Resolves the URI first.  ``ssh://`` and ``tcp://`` URIs name no local
    socket (EPROTONOSUPPORT); :func:`sdexec.transport.connector.open_link`
    connects to any URI.
    """
    resolved = resolve(uri if uri else default_uri())
    if resolved.startswith(_PASSTHROUGH):
        scheme = resolved.split(":", 1)[0]
        raise SdexecError(errno.EPROTONOSUPPORT, f"{scheme}:// URIs have no local socket")
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
