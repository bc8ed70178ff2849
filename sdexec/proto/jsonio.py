"""Fast JSON for RFC 24 io objects: bulk data as bytes, never as a Python str.

Theory of operation
-------------------
Output and stdin travel as RFC 24 io objects inside JSON payloads (RFC 42
"exec", "write").  Going through ``json`` means a ``str`` of the whole
chunk, escaped character by character; for text with a newline every few
dozen bytes that runs at tens of MB/s, far below the speed of a pipe.

This module escapes and unescapes the ``data`` string at the byte level
instead.  Valid UTF-8 needs no transcoding to sit inside JSON text; only
``"``, ``\\`` and the control characters below 0x20 must be escaped (RFC
8259 section 7).  The common ones (``\\n``, ``\\t``, ``\\r``, ``"``, ``\\``)
are replaced with ``bytes.replace``, which runs at memory speed; a chunk with
any other control character takes the ``json`` module, so the output is
exactly what ``json.dumps(..., ensure_ascii=False)`` would write.  Pure
ASCII needs no UTF-8 check at all; other text is checked by the UTF-8 codec,
which bounds the speed of text dense in multi-byte characters.

The decoders accept only the exact layouts the encoders write and return
None for anything else, so that callers fall back to the ``json`` module:
correctness never depends on the peer being this implementation.  Data is
decoded straight out of the message payload (through a ``memoryview``), so
the JSON form of a chunk is never copied before it is decoded.  The one
place the fast path trusts its peer is the quotes inside output text, from
the server the client chose (see :func:`parse_output_data`); ``write``
payloads, from clients, are checked exactly.

Sans-IO and cheap to import (it is on the CLI's start-up path):
:mod:`sdexec.proto.cjson` rather than ``json``, and no regular expression;
base64 goes through :mod:`sdexec.proto.b64`, which loads its codec (SIMD
when installed) on first use.
"""

from __future__ import annotations

import codecs

from sdexec.proto import cjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_RARE_CONTROLS = tuple(bytes((c,)) for c in range(0x20) if c not in (0x09, 0x0A, 0x0D))
_SIMPLE = ((b'"', b'\\"'), (b"\n", b"\\n"), (b"\t", b"\\t"), (b"\r", b"\\r"))


def _dumps(value: str) -> bytes:
    return cjson.dumps(value).encode()


_QUOTED: dict[str, bytes] = {}


def _quoted(name: str) -> bytes:
    """A stream name or rank as a JSON string; the few in use are remembered."""
    quoted = _QUOTED.get(name)
    if quoted is None:
        quoted = _dumps(name)
        if len(_QUOTED) < 256:
            _QUOTED[name] = quoted
    return quoted


def escape_utf8(data: bytes, *, nul: bool = True) -> bytes | None:
    """The body of a JSON string (no quotes) holding ``data``.

    None if ``data`` is not UTF-8, or holds a NUL and ``nul`` is false (C JSON
    parsers reject ``\\u0000``; the caller then sends base64).
    """
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    # One memchr per rare control character beats one translate() pass.
    for ctrl in _RARE_CONTROLS:
        if ctrl in data:
            if not nul and b"\0" in data:
                return None
            return _dumps(data.decode("utf-8"))[1:-1]
    if b"\\" in data:
        data = data.replace(b"\\", b"\\\\")  # first, so the escapes below stay single
    for plain, escaped in _SIMPLE:
        if plain in data:
            data = data.replace(plain, escaped)
    return data


def _io_pieces(head: bytes, data: bytes | None, eof: bool, *, nul: bool) -> list[bytes]:
    """``head`` + the io object's data fields + its end, as pieces to join or write."""
    end = b',"eof":true}}\0' if eof else b"}}\0"
    if not data:
        return [head + end]
    body = escape_utf8(data, nul=nul)
    if body is not None:
        return [head + b',"data":"', body, b'"' + end]
    from sdexec.proto import b64  # binary data only: not on the CLI's start-up path

    return [head + b',"data":"', b64.encode(data), b'","encoding":"base64"' + end]


def _io_join(head: bytes, data: bytes | None, eof: bool, *, nul: bool) -> bytes:
    """``head`` + the io object's data fields + its end, in one copy of the data."""
    return b"".join(_io_pieces(head, data, eof, nul=nul))


def output_pieces(pid: int, stream: str, rank: str, data: bytes | None, eof: bool) -> list[bytes]:
    """:func:`output_payload` in pieces whose concatenation it is.

    The data (escaped, or base64) is one piece of its own, so that it can go
    to the socket without being copied into a payload (``writev``).
    """
    head = b'{"type":"output","pid":%d,"io":{"stream":%s,"rank":%s' % (
        pid,
        _quoted(stream),
        _quoted(rank),
    )
    return _io_pieces(head, data, eof, nul=True)


def output_payload(pid: int, stream: str, rank: str, data: bytes | None, eof: bool) -> bytes:
    """An RFC 42 ``output`` response payload, NUL-terminated, ready for the wire.

    The same JSON as ``{"type": "output", "pid": pid, "io": {...}}`` through
    :func:`sdexec.proto.message.encode_payload`, with the io object of
    :func:`sdexec.proto.rfc42.io_object`.
    """
    return b"".join(output_pieces(pid, stream, rank, data, eof))


_OUTPUT_PREFIX = b'{"type":"output","pid":'
_WRITE_PREFIX = b'{"matchtag":'
_IO_STREAM = b',"io":{"stream":"'
_RANK = b'","rank":"'
_DATA = b',"data":"'
_EOF_END = b',"eof":true}}'
_BASE64_END = b'","encoding":"base64"'


def _head(payload: bytes, prefix: bytes) -> tuple[int, bytes, bytes, int] | None:
    """(number, stream, rank, end) of ``PREFIX<int>,"io":{"stream":"S","rank":"R"``.

    Plain ``find``/``startswith`` rather than a regular expression: compiling
    one costs more CLI start-up time than this whole module.
    """
    if not payload.startswith(prefix):
        return None
    i = len(prefix)
    j = payload.find(_IO_STREAM, i, i + 24)
    if j < 0:
        return None
    number = payload[i:j]
    if not (number.isdigit() or (number[:1] == b"-" and number[1:].isdigit())):
        return None
    j += len(_IO_STREAM)
    k = payload.find(_RANK, j, j + 256)
    if k < 0:
        return None
    stream = payload[j:k]
    k += len(_RANK)
    end = payload.find(b'"', k, k + 32)
    if end < 0:
        return None
    rank = payload[k:end]
    names = stream + rank
    if b"\\" in names or b'"' in names or not names.isascii():
        return None
    return int(number), stream, rank, end + 1


class _Tail:
    """Where the data of an io object lies in its payload: ``payload[begin:end]``.

    ``begin == end == -1`` when the object has no ``data``; ``base64`` for
    ``"encoding":"base64"``.  Indices rather than a slice: the data is
    decoded straight from the payload, without a copy of its JSON form.
    """

    __slots__ = ("base64", "begin", "end", "eof")

    def __init__(self, begin: int, end: int, base64: bool, eof: bool) -> None:
        self.begin = begin
        self.end = end
        self.base64 = base64
        self.eof = eof


def _io_tail(payload: bytes, start: int) -> _Tail | None:
    """The rest of an io object from ``start``, ending in ``}}`` (and a NUL), or None."""
    end = len(payload) - 1 if payload.endswith(b"\0") else len(payload)
    eof = False
    if payload.endswith(_EOF_END, start, end):
        eof = True
        end -= len(_EOF_END)
    elif payload.endswith(b"}}", start, end):
        end -= 2
    else:
        return None
    if end == start:
        return _Tail(-1, -1, False, eof)
    if not payload.startswith(_DATA, start, end):
        return None
    start += len(_DATA)
    if payload.endswith(_BASE64_END, start, end):
        end -= len(_BASE64_END)
        # The base64 alphabet has neither: a body with one is not this layout.
        if payload.find(b'"', start, end) >= 0 or payload.find(b"\\", start, end) >= 0:
            return None
        return _Tail(start, end, True, eof)
    if not payload.endswith(b'"', start, end):
        return None
    end -= 1
    if payload.endswith(b"\\", start, end):
        stripped = len(payload[start:end].rstrip(b"\\"))
        if (end - start - stripped) % 2:
            return None  # the closing quote was escaped: not our layout
    return _Tail(start, end, False, eof)


def _quotes_escaped(payload: bytes, begin: int, end: int) -> bool:
    """True if no ``"`` in ``payload[begin:end]`` ends the JSON string early.

    A bare quote would mean another layout: the body would hold more members
    of the object (``x","signature":"...``), which ``json`` reads as such.
    Exact when the body has no quote, or quotes but no escaped backslash
    (then every backslash starts an escape, and a quote is escaped exactly
    when a backslash precedes it); False leaves the rare rest to ``json``.
    """
    if payload.find(b'"', begin, end) < 0:
        return True
    if payload.find(b"\\\\", begin, end) >= 0:
        return False
    return payload.count(b'"', begin, end) == payload.count(b'\\"', begin, end)


def _unescape_range(payload: bytes, begin: int, end: int) -> bytes | None:
    """:func:`unescape` of ``payload[begin:end]``, decoded in place (one copy)."""
    if payload.find(b"\\", begin, end) < 0:
        return payload[begin:end]
    return unescape(memoryview(payload)[begin:end])


def unescape(body: bytes | memoryview) -> bytes | None:
    """The bytes of a JSON string body, or None if it uses ``\\u`` or ``\\/``.

    Within a valid JSON string, every other escape (``\\"`` ``\\\\``
    ``\\b`` ``\\f`` ``\\n`` ``\\r`` ``\\t``) means the same as in a
    Python bytes literal, so the C ``escape_decode`` does the work in one
    pass; it warns about the two it does not know, and a warning turned
    into an error sends the body to ``json``.  The body is trusted to be a
    JSON string body (no bare quote; see :func:`_quotes_escaped`): this is a
    fast path for a known layout, not a validator.
    """
    if isinstance(body, bytes) and b"\\" not in body:
        return body
    import warnings  # not on the CLI's start-up path

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return codecs.escape_decode(body)[0]
        except (Warning, ValueError):
            return None


def _io_object(stream: bytes, rank: bytes, payload: bytes, tail: _Tail) -> dict[str, Any] | None:
    io: dict[str, Any] = {"stream": stream.decode(), "rank": rank.decode()}
    if tail.begin >= 0:
        if tail.base64:
            io["data"] = payload[tail.begin : tail.end].decode("ascii")
            io["encoding"] = "base64"
        else:
            raw = _unescape_range(payload, tail.begin, tail.end)
            if raw is None:
                return None
            try:
                io["data"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
    if tail.eof:
        io["eof"] = True
    return io


def parse_output(payload: bytes) -> dict[str, Any] | None:
    """The payload of an ``output`` response from :func:`output_payload`, or None.

    Returns the same dict ``json.loads`` would; None for any other layout.
    """
    head = _head(payload, _OUTPUT_PREFIX)
    if head is None:
        return None
    pid, stream, rank, end = head
    tail = _io_tail(payload, end)
    if tail is None:
        return None
    if tail.begin >= 0 and not tail.base64 and not _quotes_escaped(payload, tail.begin, tail.end):
        return None
    io = _io_object(stream, rank, payload, tail)
    if io is None:
        return None
    return {"type": "output", "pid": pid, "io": io}


def parse_output_data(payload: bytes) -> tuple[int, str, bytes, bool] | None:
    """(pid, stream, data, eof) of an ``output`` response from :func:`output_payload`.

    The data as bytes, never as a str: the receiving end of output
    forwarding.  None for any other layout (the caller then uses ``json``).
    Text is passed on as the bytes that were sent, without a UTF-8 check,
    and the layout is trusted to be the server's: quotes inside the text
    are not checked for being escaped (:func:`_quotes_escaped` would cost
    more than the rest of the decoding for text full of quotes).
    """
    head = _head(payload, _OUTPUT_PREFIX)
    if head is None:
        return None
    pid, stream, _rank, end = head
    tail = _io_tail(payload, end)
    if tail is None:
        return None
    data = b""
    if tail.base64:
        from sdexec.proto import b64

        try:
            data = b64.decode(memoryview(payload)[tail.begin : tail.end])
        except ValueError:
            return None
    elif tail.begin >= 0:
        text = _unescape_range(payload, tail.begin, tail.end)
        if text is None:
            return None
        data = text
    return pid, stream.decode(), data, tail.eof


def write_payload(matchtag: int, stream: str, rank: str, data: bytes, eof: bool) -> bytes:
    """An RFC 42 ``write`` request payload, NUL-terminated (see :func:`output_payload`)."""
    head = b'{"matchtag":%d,"io":{"stream":%s,"rank":%s' % (
        matchtag,
        _quoted(stream),
        _quoted(rank),
    )
    return _io_join(head, data, eof, nul=False)


def parse_write(payload: bytes) -> tuple[int, str, bytes, bool] | None:
    """(matchtag, stream, data, eof) of a ``write`` in :func:`write_payload`'s layout, or None.

    Exact, since the payload comes from a client: when this returns a
    result, ``json.loads`` reads the same object (``matchtag`` and ``io``
    and nothing else) from a valid JSON payload.
    """
    head = _head(payload, _WRITE_PREFIX)
    if head is None:
        return None
    matchtag, stream, _rank, end = head
    tail = _io_tail(payload, end)
    if tail is None:
        return None
    data = b""
    if tail.base64:
        from sdexec.proto import b64

        try:
            data = b64.decode(memoryview(payload)[tail.begin : tail.end])
        except ValueError:
            return None
    elif tail.begin >= 0:
        if not _quotes_escaped(payload, tail.begin, tail.end):
            return None
        raw = _unescape_range(payload, tail.begin, tail.end)
        if raw is None:
            return None
        if not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
        data = raw
    return matchtag, stream.decode(), data, tail.eof
