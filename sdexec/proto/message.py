"""RFC 3 Flux messages: the message model and its multipart codec.

Theory of operation
-------------------
A Flux message is an ordered list of parts (RFC 3 "Common Message Format"):

    [route ... route] [delimiter] [topic] [payload] PROTO

The PROTO part is always last and is 20 bytes:

    magic(0x8e) version(1) type flags userid rolemask aux1 aux2

with the four 4-byte integers big endian.  ``aux1``/``aux2`` mean
nodeid/matchtag for a request, errnum/matchtag for a response,
sequence/unused for an event and type/status for a control message.

The structural flags TOPIC, PAYLOAD and ROUTE say which optional parts are
present; this module derives them from the :class:`Message` fields, so a
message can never disagree with its own flags.  Routes are kept in wire
order: ``routes[0]`` is the top of the stack (the most recent hop) and
``routes[-1]`` the hop closest to the delimiter (the origin).

As flux-core does, the topic and route parts carry no terminating NUL;
JSON and error-string payloads do (RFC 3 "Payload Conventions").

This module is sans-IO: it turns parts into messages and back, nothing else.
"""

from __future__ import annotations

import struct

from sdexec.base.errors import ProtocolError
from sdexec.proto import cjson

TYPE_CHECKING = False  # typing costs the CLI ~4 ms of start-up; only mypy needs it
if TYPE_CHECKING:
    from typing import Any, Final

PROTO_MAGIC = 0x8E
PROTO_VERSION = 1
PROTO_SIZE = 20
_PROTO = struct.Struct(">BBBBIIII")

USERID_UNKNOWN = 0xFFFFFFFF
NODEID_ANY = 0xFFFFFFFF
NODEID_UPSTREAM = 0xFFFFFFFE
MATCHTAG_NONE = 0

ROLE_NONE = 0
ROLE_OWNER = 1
ROLE_USER = 2
ROLE_ALL = 0xFFFFFFFF


class MsgType:
    """Message types (RFC 3).

    Plain ints rather than an enum: ``enum`` costs every client ~5 ms of
    start-up, and every decoded message an enum lookup.
    """

    REQUEST: Final = 0x01
    RESPONSE: Final = 0x02
    EVENT: Final = 0x04
    CONTROL: Final = 0x08
    ALL: Final = (REQUEST, RESPONSE, EVENT, CONTROL)
    NAMES: Final = {REQUEST: "request", RESPONSE: "response", EVENT: "event", CONTROL: "control"}


class MsgFlag:
    """Message flags (RFC 3), plain ints as :class:`MsgType`."""

    TOPIC: Final = 0x01
    PAYLOAD: Final = 0x02
    NORESPONSE: Final = 0x04
    ROUTE: Final = 0x08
    UPSTREAM: Final = 0x10
    PRIVATE: Final = 0x20
    STREAMING: Final = 0x40
    USER1: Final = 0x80
    ALL: Final = (TOPIC, PAYLOAD, NORESPONSE, ROUTE, UPSTREAM, PRIVATE, STREAMING, USER1)


_STRUCTURAL = MsgFlag.TOPIC | MsgFlag.PAYLOAD | MsgFlag.ROUTE
_VALID_TYPES = frozenset(MsgType.ALL)


class Message:
    """One Flux message.

    ``flags`` holds only the non-structural flags (NORESPONSE, UPSTREAM,
    PRIVATE, STREAMING, USER1); the structural ones follow from ``routes``,
    ``topic`` and ``payload``.  ``routes is None`` means no route delimiter;
    an empty list means a delimiter with no routes.

    A plain ``__slots__`` class rather than a dataclass: this module is on
    every client's start-up path and ``dataclasses`` costs ~10 ms to import.
    """

    __slots__ = (
        "_json",
        "aux1",
        "aux2",
        "flags",
        "payload",
        "rolemask",
        "routes",
        "topic",
        "type",
        "userid",
    )

    def __init__(
        self,
        type: int,
        topic: str | None = None,
        payload: bytes | None = None,
        flags: int = 0,
        routes: list[str] | None = None,
        userid: int = USERID_UNKNOWN,
        rolemask: int = ROLE_NONE,
        aux1: int = 0,
        aux2: int = 0,
    ) -> None:
        self.type = type
        self.topic = topic
        self.payload = payload
        self.flags = flags
        self.routes = routes
        self.userid = userid
        self.rolemask = rolemask
        self.aux1 = aux1
        self.aux2 = aux2
        self._json: Any = None

    _FIELDS = ("type", "topic", "payload", "flags", "routes", "userid", "rolemask", "aux1", "aux2")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._FIELDS)
        return f"Message({inner})"

    # --- typed views of the two auxiliary header words -------------------

    @property
    def nodeid(self) -> int:
        return self.aux1

    @property
    def errnum(self) -> int:
        return self.aux1 if self.type == MsgType.RESPONSE else 0

    @property
    def sequence(self) -> int:
        return self.aux1

    @property
    def matchtag(self) -> int:
        return self.aux2

    @property
    def streaming(self) -> bool:
        return bool(self.flags & MsgFlag.STREAMING)

    @property
    def noresponse(self) -> bool:
        return bool(self.flags & MsgFlag.NORESPONSE)

    @property
    def wire_flags(self) -> int:
        """The flags byte as it goes on the wire, structural flags included."""
        f = self.flags & ~_STRUCTURAL & 0xFF
        if self.topic is not None:
            f |= MsgFlag.TOPIC
        if self.payload is not None:
            f |= MsgFlag.PAYLOAD
        if self.routes is not None:
            f |= MsgFlag.ROUTE
        return int(f)

    # --- routes -----------------------------------------------------------

    def push_route(self, ident: str) -> None:
        if not ident:
            raise ProtocolError("a route identity must not be empty")
        if self.routes is None:
            self.routes = []
        self.routes.insert(0, ident)

    def pop_route(self) -> str:
        if not self.routes:
            raise ProtocolError("message has no route to pop")
        return self.routes.pop(0)

    @property
    def sender(self) -> str | None:
        """The origin hop (RFC 6 "Disconnection"): the route nearest the delimiter."""
        return self.routes[-1] if self.routes else None

    # --- payloads -----------------------------------------------------------

    def json(self) -> Any:
        """Decode the payload as a JSON object (EPROTO if it is not one).

        A trailing NUL is accepted and ignored; a missing payload is an error.
        The decoded object is cached.
        """
        if self._json is None:
            self._json = decode_json_payload(self.payload)
        return self._json

    def error_text(self) -> str | None:
        """The error string of an error response, if one was sent."""
        if not self.payload:
            return None
        return self.payload.rstrip(b"\0").decode("utf-8", "replace") or None

    # --- constructors -------------------------------------------------------

    @classmethod
    def request(
        cls,
        topic: str,
        payload: Any = None,
        *,
        matchtag: int = MATCHTAG_NONE,
        nodeid: int = NODEID_ANY,
        flags: int = 0,
    ) -> Message:
        return cls(
            MsgType.REQUEST,
            topic=topic,
            payload=encode_payload(payload),
            flags=flags,
            routes=[],
            aux1=nodeid,
            aux2=matchtag,
        )

    @classmethod
    def event(cls, topic: str, payload: Any = None, *, sequence: int = 0) -> Message:
        return cls(MsgType.EVENT, topic=topic, payload=encode_payload(payload), aux1=sequence)

    def response(self, payload: Any = None, *, errnum: int = 0, text: str | None = None) -> Message:
        """A response to this request: topic, matchtag, routes and STREAMING copied.

        ``payload`` is a JSON object for a success; for an error, pass
        ``errnum`` and optionally ``text`` (sent NUL-terminated).
        """
        if errnum:
            body = None if text is None else text.encode("utf-8", "replace") + b"\0"
        else:
            body = encode_payload(payload)
        return Message(
            MsgType.RESPONSE,
            topic=self.topic,
            payload=body,
            flags=self.flags & MsgFlag.STREAMING,
            routes=None if self.routes is None else list(self.routes),
            userid=self.userid,
            rolemask=self.rolemask,
            aux1=errnum,
            aux2=self.aux2,
        )


def encode_payload(payload: Any) -> bytes | None:
    """JSON object -> NUL-terminated JSON text; bytes pass through; None stays None."""
    if payload is None:
        return None
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    return cjson.dumps(payload).encode() + b"\0"


def decode_json_payload(payload: bytes | None) -> dict[str, Any]:
    if payload is None:
        raise ProtocolError("message has no payload")
    data = payload[:-1] if payload.endswith(b"\0") else payload
    try:
        obj = cjson.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("payload is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("JSON payload is not an object")
    return obj


def encode_proto(msg: Message) -> bytes:
    return _PROTO.pack(
        PROTO_MAGIC,
        PROTO_VERSION,
        int(msg.type),
        msg.wire_flags,
        msg.userid & 0xFFFFFFFF,
        msg.rolemask & 0xFFFFFFFF,
        msg.aux1 & 0xFFFFFFFF,
        msg.aux2 & 0xFFFFFFFF,
    )


def encode_parts(msg: Message) -> list[bytes]:
    """A message as its list of RFC 3 parts, PROTO last."""
    parts: list[bytes] = []
    if msg.routes is not None:
        if not all(msg.routes):
            raise ProtocolError("a route identity must not be empty")
        parts.extend(r.encode() for r in msg.routes)
        parts.append(b"")
    if msg.topic is not None:
        parts.append(msg.topic.encode())
    if msg.payload is not None:
        parts.append(msg.payload)
    parts.append(encode_proto(msg))
    return parts


def decode_parts(parts: list[bytes]) -> Message:
    """Parse a list of RFC 3 parts into a message, or raise ProtocolError."""
    if not parts:
        raise ProtocolError("message has no parts")
    proto = parts[-1]
    if len(proto) != PROTO_SIZE:
        raise ProtocolError("PROTO part has the wrong size")
    magic, version, mtype, flags, userid, rolemask, aux1, aux2 = _PROTO.unpack(proto)
    if magic != PROTO_MAGIC:
        raise ProtocolError("bad PROTO magic")
    if version != PROTO_VERSION:
        raise ProtocolError("unsupported message version")
    if mtype not in _VALID_TYPES:
        raise ProtocolError("unknown message type")
    body = parts[:-1]
    i = 0
    routes: list[str] | None = None
    try:
        if flags & MsgFlag.ROUTE:
            routes = []
            while body[i] != b"":
                routes.append(body[i].decode())
                i += 1
            i += 1  # the delimiter
        topic = None
        if flags & MsgFlag.TOPIC:
            topic = body[i].decode()
            i += 1
        payload = None
        if flags & MsgFlag.PAYLOAD:
            payload = bytes(body[i])
            i += 1
    except IndexError as exc:
        raise ProtocolError("message parts do not match its flags") from exc
    except UnicodeDecodeError as exc:
        raise ProtocolError("topic or route is not UTF-8") from exc
    if i != len(body):
        raise ProtocolError("message has unexpected extra parts")
    if topic is not None and topic.endswith("\0"):
        topic = topic[:-1]  # tolerate a NUL-terminated topic (RFC 3 text)
    return Message(
        mtype,
        topic=topic,
        payload=payload,
        flags=flags & ~_STRUCTURAL,
        routes=routes,
        userid=userid,
        rolemask=rolemask,
        aux1=aux1,
        aux2=aux2,
    )
