"""Who may connect, who must sign, and the RFC 42 "Request Authentication" rules.

Theory of operation
-------------------
Three kinds of peer, by the uid ``SO_PEERCRED`` gives the transport:

* the **server's uid** and the **instance owner** (``--owner``, by default
  the server's uid) are *trusted*: they connect, get the owner role, and see
  every process;
* everyone else is a **guest**: refused at the handshake with EPERM unless
  ``--allow-guests``; a guest sees and touches only the processes it started
  (:mod:`sdexec.server.service` checks ``rolemask``), and its commands run as
  itself (:mod:`sdexec.security.guest`).

Connections are counted: at most ``max_connections`` in all.  Guests are
held to ``max_connections_per_uid`` each, and all of them together to the
total less a reserve kept for the trusted uids (:func:`owner_reserve`), so
no number of guests can lock the owner out.  The trusted uids have no cap
of their own (200 attached clients of the owner are all let in); when the
table is full, a trusted uid's new connection is admitted by closing the
connection that has been idle longest (nothing in flight, no subscription:
the ``evict`` callback the gate gets from the router), so the owner always
gets in, even past a flood from its own uid.  Over a limit the handshake
byte is EAGAIN and the connection is closed, so a flood of connections
costs the server one file descriptor per admitted connection and nothing
for the rest.

A server whose uid differs from the owner, or whose owner could not be
determined, requires every RFC 42 request to be signed (RFC 42 "Request
Authentication").  :class:`RequestRules` applies the seed's rules, in the
seed's order, to a request that carries a ``signature`` field:

1. mechanism support missing (libmunge cannot be loaded): EPERM;
2. the signature is not a string: EPROTO;
3. RFC 39 verification (:func:`sdexec.security.sign.unwrap`) fails, the
   signature is older than the TTL (or from the future), or it was already
   accepted (:mod:`sdexec.security.replay`): EPERM;
4. the signer is not the server's uid: EPERM;
5. the signer is not the uid of the connection the request came on (the
   stricter check flux-core makes): EPERM;
6. the signed payload is not a JSON object: EPROTO; its ``topic`` is absent
   or is not the request's topic: EPERM;
7. missing or invalid REQUIRED fields: EPROTO, found by the handler, which
   is given the signed object as the request's payload.

Sans-IO: the clock is injectable and nothing here touches a socket.
"""

from __future__ import annotations

import collections
import errno
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.security import sign
from sdexec.security.replay import DEFAULT_CAPACITY, ReplayCache

DEFAULT_TTL = 60.0
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_CONNECTIONS_PER_UID = 128
#: A signature dated this many seconds ahead of the server's clock is refused.
FUTURE_SLACK = 2.0
SIGNED_METHODS = sign.SIGNED_METHODS


@dataclass(slots=True)
class SecurityConfig:
    """The server's security settings (``sdexec serve`` options)."""

    server_uid: int
    owner: int | None
    allow_guests: bool = False
    sign_ttl: float = DEFAULT_TTL
    mechanisms: tuple[str, ...] = sign.MECHANISMS
    munge_socket: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_uid: int = DEFAULT_MAX_CONNECTIONS_PER_UID
    replay_capacity: int = DEFAULT_CAPACITY
    #: Where accepted signatures are kept across restarts (None: memory only).
    replay_file: str | None = None
    service: str = "sdexec"
    guarded: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.guarded:
            self.guarded = frozenset(f"{self.service}.{m}" for m in SIGNED_METHODS)

    @property
    def signatures_required(self) -> bool:
        """RFC 42: required when the owner differs from the server or is unknown."""
        return self.owner is None or self.owner != self.server_uid

    def trusted(self, uid: int) -> bool:
        return uid == self.server_uid or (self.owner is not None and uid == self.owner)


def owner_reserve(max_connections: int) -> int:
    """Connections only the trusted uids may use: an eighth, at least 16 (all, if fewer)."""
    return min(max_connections, max(16, max_connections // 8))


class Admission:
    """Handshake decisions and connection counting."""

    def __init__(self, config: SecurityConfig) -> None:
        self.config = config
        self.uid_of: dict[str, int] = {}
        self.per_uid: collections.Counter[int] = collections.Counter()
        self.guests = 0
        self.evicted = 0

    def admit(
        self, conn_id: str, uid: int, evict: Callable[[], str | None] | None = None
    ) -> tuple[int, str]:
        """(0, "") to accept, else (errno, reason).

        ``evict`` closes the longest-idle connection and returns its id (None
        if there is none to close); it is called for a trusted uid when the
        table is full.
        """
        cfg = self.config
        trusted = cfg.trusted(uid)
        if not trusted and not cfg.allow_guests:
            return errno.EPERM, "guests are not allowed"
        if trusted:
            if len(self.uid_of) >= cfg.max_connections:
                victim = evict() if evict is not None else None
                if victim is None:
                    return (
                        errno.EAGAIN,
                        f"connection limit reached ({cfg.max_connections}) "
                        "and no idle connection to close",
                    )
                self.release(victim)
                self.evicted += 1
        else:
            guest_room = cfg.max_connections - owner_reserve(cfg.max_connections)
            if len(self.uid_of) >= cfg.max_connections or self.guests >= guest_room:
                return errno.EAGAIN, f"connection limit for guests reached ({guest_room})"
            if self.per_uid[uid] >= cfg.max_connections_per_uid:
                return (
                    errno.EAGAIN,
                    f"per-user connection limit reached ({cfg.max_connections_per_uid})",
                )
            self.guests += 1
        self.uid_of[conn_id] = uid
        self.per_uid[uid] += 1
        return 0, ""

    def release(self, conn_id: str) -> None:
        uid = self.uid_of.pop(conn_id, None)
        if uid is not None:
            if not self.config.trusted(uid):
                self.guests -= 1
            self.per_uid[uid] -= 1
            if self.per_uid[uid] <= 0:
                del self.per_uid[uid]


class Refusal(SdexecError):
    """A request refused by the authentication rules (errno and reason)."""


def _refuse(errnum: int, reason: str) -> Refusal:
    return Refusal(errnum, reason)


@dataclass(slots=True)
class Accepted:
    """What the handler gets for a verified signed request."""

    payload: dict[str, Any]
    signer: int
    mechanism: str


class RequestRules:
    """RFC 42 "Request Authentication", split so verification can run in a thread.

    :meth:`precheck` (event loop) applies rules 1-2 and says whether a
    signature must be verified; :meth:`verify` (any thread) is rule 3's RFC
    39 part; :meth:`admit` (event loop) applies the rest and records the
    signature in the replay cache.
    """

    def __init__(self, config: SecurityConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.replay = ReplayCache(config.replay_capacity)
        #: Called with (replay key, signing time, now) for each accepted signature.
        self.on_accept: Callable[[bytes, float, float], None] | None = None
        self._munge_ok: bool | None = None

    def guarded(self, topic: str) -> bool:
        return topic in self.config.guarded

    def precheck(self, topic: str, payload: dict[str, Any]) -> str | None:
        """The signature string to verify, or None for an acceptable unsigned request."""
        if sign.SIGNATURE_KEY not in payload:
            if self.config.signatures_required:
                raise _refuse(errno.EPERM, "this server requires signed requests")
            return None
        value = payload[sign.SIGNATURE_KEY]
        if not isinstance(value, str):
            raise _refuse(errno.EPROTO, "signature is not a string")
        return value

    def mechanism_of(self, signature: str) -> str | None:
        """The header's mechanism (cheap; None if it cannot be read)."""
        try:
            value = sign.peek_header(signature).get("mechanism")
        except SdexecError:
            return None
        return value if isinstance(value, str) else None

    def _mechanism_available(self, mechanism: str | None) -> bool:
        if mechanism != sign.MUNGE:
            return True
        if self._munge_ok is None:
            from sdexec.security import munge

            self._munge_ok = munge.available()
        return self._munge_ok

    def needs_thread(self, signature: str) -> bool:
        """Whether verifying may block (it asks munged)."""
        mechanism = self.mechanism_of(signature)
        if not self._mechanism_available(mechanism):
            raise _refuse(errno.EPERM, f"signature mechanism {mechanism} is not available")
        return mechanism == sign.MUNGE

    def verify(self, signature: str) -> sign.Unwrapped:
        """RFC 39 verification (rule 3, without TTL and replay)."""
        try:
            return sign.unwrap(
                signature, allowed=self.config.mechanisms, munge_socket=self.config.munge_socket
            )
        except SdexecError as exc:
            raise _refuse(errno.EPERM, exc.message) from None

    def admit(self, topic: str, userid: int, unwrapped: sign.Unwrapped) -> Accepted:
        """Rules 3 (TTL, replay) to 6; records the signature when all pass."""
        cfg = self.config
        now = self.clock()
        if unwrapped.issued > now + FUTURE_SLACK:
            raise _refuse(errno.EPERM, "signature verification failed: signed in the future")
        if now - unwrapped.issued > cfg.sign_ttl:
            raise _refuse(errno.EPERM, "signature verification failed: signature has expired")
        if unwrapped.replay_key in self.replay:
            raise _refuse(errno.EPERM, "signature verification failed: replayed signature")
        if unwrapped.userid != cfg.server_uid:
            raise _refuse(errno.EPERM, f"signer {unwrapped.userid} is not the server's uid")
        if unwrapped.userid != userid:
            raise _refuse(
                errno.EPERM, f"signer {unwrapped.userid} is not the connection's uid {userid}"
            )
        payload = decode_signed_payload(unwrapped.payload)
        signed_topic = payload.get("topic")
        if signed_topic is None:
            raise _refuse(errno.EPERM, "signed payload has no topic")
        if signed_topic != topic:
            raise _refuse(errno.EPERM, f"signed topic {signed_topic!r} is not {topic!r}")
        try:
            self.replay.accept(unwrapped.replay_key, unwrapped.issued + cfg.sign_ttl + 1, now)
            if self.on_accept is not None:  # persisted before the request runs
                self.on_accept(unwrapped.replay_key, unwrapped.issued, now)
        except SdexecError as exc:
            raise _refuse(exc.errno or errno.EPERM, exc.message) from None
        return Accepted(payload, unwrapped.userid, unwrapped.mechanism)


def decode_signed_payload(data: bytes) -> dict[str, Any]:
    """The signature JSON object; EPROTO if it is not a JSON object."""
    try:
        text = data[:-1] if data.endswith(b"\0") else data
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("signed payload is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("signed payload is not a JSON object")
    return obj
