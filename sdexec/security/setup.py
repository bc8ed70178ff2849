"""``sdexec serve`` security options: parse them into a :class:`SecurityConfig`.

Theory of operation
-------------------
The instance owner is ``--owner`` (a uid or a user name; default: the
server's own uid).  A name that does not resolve means the owner cannot be
determined, and RFC 42 then requires a signature on every request; the
server says so in its log rather than refusing to start.

The server raises its soft ``RLIMIT_NOFILE`` to the hard limit at start (a
connection, a pipe, a journal stream are each a descriptor, and running out
of them locks everyone out), so that ``--max-connections`` connections plus
the descriptors of the processes it runs fit; if the hard limit is too low,
the connection limit is lowered to fit instead, and logged.
"""

from __future__ import annotations

import argparse
import os
import pwd
import resource

import structlog

from sdexec.security import sign
from sdexec.security.policy import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_UID,
    DEFAULT_TTL,
    SecurityConfig,
)

log = structlog.get_logger("sdexec.security")

#: Descriptors kept free for everything but connections (pipes, the bus, logs).
FD_RESERVE = 1024
DEFAULT_MAX_MESSAGE = 4 << 20
DEFAULT_MAX_OUTPUT_BUFFER = 8 << 20
USERID_UNKNOWN = 0xFFFFFFFF


def resolve_owner(text: str | None, server_uid: int) -> int | None:
    """The owner uid for ``--owner`` (None when it cannot be determined)."""
    if text is None or text == "":
        return server_uid
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        return None


def mechanisms(text: str | None) -> tuple[str, ...]:
    """``--sign-mechanisms none,munge`` as a tuple (ValueError if unknown)."""
    if not text:
        return sign.MECHANISMS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in sign.MECHANISMS]
    if unknown or not names:
        raise ValueError(f"unknown signature mechanism(s): {', '.join(unknown) or text}")
    return names


def config_from_args(args: argparse.Namespace, service: str = "sdexec") -> SecurityConfig:
    server_uid = os.getuid()
    owner_arg = getattr(args, "owner", None)
    owner = resolve_owner(owner_arg, server_uid)
    if owner is None:
        log.warning("owner cannot be determined; every request must be signed", owner=owner_arg)
    return SecurityConfig(
        server_uid=server_uid,
        owner=owner,
        allow_guests=bool(getattr(args, "allow_guests", False)),
        sign_ttl=float(getattr(args, "sign_ttl", None) or DEFAULT_TTL),
        mechanisms=mechanisms(getattr(args, "sign_mechanisms", None)),
        munge_socket=getattr(args, "munge_socket", None) or os.environ.get("SDEXEC_MUNGE_SOCKET"),
        max_connections=int(getattr(args, "max_connections", None) or DEFAULT_MAX_CONNECTIONS),
        max_connections_per_uid=int(
            getattr(args, "max_connections_per_uid", None) or DEFAULT_MAX_CONNECTIONS_PER_UID
        ),
        service=service,
    )


#: The soft limit set when the hard one is unlimited.
NOFILE_UNLIMITED = 1 << 20


def fit_fd_limit(config: SecurityConfig) -> None:
    """Raise RLIMIT_NOFILE to the hard limit, and lower the connection limit to fit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(config.max_connections + FD_RESERVE, NOFILE_UNLIMITED)
    new = want if hard == resource.RLIM_INFINITY else hard
    if soft < new:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    want = config.max_connections + FD_RESERVE
    if soft < want:
        fitted = max(1, soft - FD_RESERVE)
        log.warning(
            "connection limit lowered to fit RLIMIT_NOFILE",
            max_connections=fitted,
            requested=config.max_connections,
            nofile=soft,
        )
        config.max_connections = fitted


def describe(config: SecurityConfig) -> dict[str, object]:
    """Fields for the server's start-up log event."""
    return {
        "owner": config.owner,
        "server_uid": config.server_uid,
        "signatures_required": config.signatures_required,
        "allow_guests": config.allow_guests,
        "sign_ttl": config.sign_ttl,
        "sign_mechanisms": ",".join(config.mechanisms),
        "max_connections": config.max_connections,
        "max_connections_per_uid": config.max_connections_per_uid,
    }
