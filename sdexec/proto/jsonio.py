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
correctness never depends on the peer being this implementation.

Sans-IO and cheap to import (it is on the CLI's start-up path):
:mod:`sdexec.proto.cjson` rather than ``json``, ``binascii``, ``codecs`` and
``warnings``, and no regular expression.
"""

from __future__ import annotations

import binascii
import codecs
import warnings

from sdexec.proto import cjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_RARE_CONTROLS = tuple(bytes((c,)) for c in range(0x20) if c not in (0x09, 0x0A, 0x0D))
_SIMPLE = ((b'"', b'\\"'), (b"\n", b"\\n"), (b"\t", b"\\t"), (b"\r", b"\\r"))


def _dumps(value: str) -> bytes:
    return cjson.dumps(value).encode()


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


def unescape(body: bytes) -> bytes | None:
    """The bytes of a JSON string body, or None if it uses ``\\u`` or ``\\/``.

    Within a valid JSON string, every other escape (``\\"`` ``\\\\``
    ``\\b`` ``\\f`` ``\\n`` ``\\r`` ``\\t``) means the same as in a
    Python bytes literal, so the C ``escape_decode`` does the work in one
    pass; it warns about the two it does not know, and a warning turned
    into an error sends the body to ``json``.  The body is trusted to be a
    JSON string body (no bare quote): this is a fast path for a known layout,
    not a validator.
    """
    if b"\\" not in body:
        return body
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return codecs.escape_decode(body)[0]
        except (Warning, ValueError):
            return None


def _io_join(head: bytes, data: bytes | None, eof: bool, *, nul: bool) -> bytes:
    """``head`` + the io object's data fields + its end, in one copy of the data."""
    end = b',"eof":true}}\0' if eof else b"}}\0"
    if not data:
        return head + end
    body = escape_utf8(data, nul=nul)
    if body is not None:
        return b"".join((head, b',"data":"', body, b'"', end))
    b64 = binascii.b2a_base64(data, newline=False)
    return b"".join((head, b',"data":"', b64, b'","encoding":"base64"', end))


def output_payload(pid: int, stream: str, rank: str, data: bytes | None, eof: bool) -> bytes:
    """An RFC 42 ``output`` response payload, NUL-terminated, ready for the wire.

    The same JSON as ``{"type": "output", "pid": pid, "io": {...}}`` through
    :func:`sdexec.proto.message.encode_payload`, with the io object of
    :func:`sdexec.proto.rfc42.io_object`.
    """
    head = b'{"type":"output","pid":%d,"io":{"stream":%s,"rank":%s' % (
        pid,
        _dumps(stream),
        _dumps(rank),
    )
    return _io_join(head, data, eof, nul=True)


_OUTPUT_PREFIX = b'{"type":"output","pid":'
_WRITE_PREFIX = b'{"matchtag":'
_IO_STREAM = b',"io":{"stream":"'
_RANK = b'","rank":"'


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
    if b"\\" in stream + rank or not (stream + rank).isascii():
        return None
    return int(number), stream, rank, end + 1


def _io_tail(payload: bytes, start: int) -> tuple[bytes | None, str | None, bool] | None:
    """(data, encoding, eof) from the rest of an io object ending in ``}}``, or None."""
    end = len(payload) - 1 if payload.endswith(b"\0") else len(payload)
    eof = False
    if payload.endswith(b',"eof":true}}', start, end):
        eof = True
        end -= len(b',"eof":true}}')
    elif payload.endswith(b"}}", start, end):
        end -= 2
    else:
        return None
    if end == start:
        return None, None, eof
    if not payload.startswith(b',"data":"', start, end):
        return None
    start += len(b',"data":"')
    if payload.endswith(b'","encoding":"base64"', start, end):
        return payload[start : end - len(b'","encoding":"base64"')], "base64", eof
    if not payload.endswith(b'"', start, end):
        return None
    body = payload[start : end - 1]
    if body.endswith(b"\\") and (len(body) - len(body.rstrip(b"\\"))) % 2:
        return None  # the closing quote was escaped: not our layout
    return body, None, eof


def _io_object(
    stream: bytes, rank: bytes, parsed: tuple[bytes | None, str | None, bool]
) -> dict[str, Any] | None:
    body, encoding, eof = parsed
    io: dict[str, Any] = {"stream": stream.decode(), "rank": rank.decode()}
    if body is not None:
        if encoding == "base64":
            if b"\\" in body or b'"' in body:
                return None
            io["data"] = body.decode("ascii")
            io["encoding"] = "base64"
        else:
            raw = unescape(body)
            if raw is None:
                return None
            try:
                io["data"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
    if eof:
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
    parsed = _io_tail(payload, end)
    if parsed is None:
        return None
    io = _io_object(stream, rank, parsed)
    if io is None:
        return None
    return {"type": "output", "pid": pid, "io": io}


def parse_output_data(payload: bytes) -> tuple[int, str, bytes, bool] | None:
    """(pid, stream, data, eof) of an ``output`` response from :func:`output_payload`.

    The data as bytes, never as a str: the receiving end of output
    forwarding.  None for any other layout (the caller then uses ``json``).
    Text is passed on as the bytes that were sent, without a UTF-8 check.
    """
    head = _head(payload, _OUTPUT_PREFIX)
    if head is None:
        return None
    pid, stream, _rank, end = head
    parsed = _io_tail(payload, end)
    if parsed is None:
        return None
    body, encoding, eof = parsed
    data = b""
    if body is not None:
        if encoding == "base64":
            try:  # not strict_mode, which halves the speed: the layout is checked
                data = binascii.a2b_base64(body)
            except (binascii.Error, ValueError):
                return None
        else:
            text = unescape(body)
            if text is None:
                return None
            data = text
    return pid, stream.decode(), data, eof


def write_payload(matchtag: int, stream: str, rank: str, data: bytes, eof: bool) -> bytes:
    """An RFC 42 ``write`` request payload, NUL-terminated (see :func:`output_payload`)."""
    head = b'{"matchtag":%d,"io":{"stream":%s,"rank":%s' % (matchtag, _dumps(stream), _dumps(rank))
    return _io_join(head, data, eof, nul=False)


def parse_write(payload: bytes) -> tuple[int, str, bytes, bool] | None:
    """(matchtag, stream, data, eof) of a ``write`` in :func:`write_payload`'s layout, or None."""
    head = _head(payload, _WRITE_PREFIX)
    if head is None:
        return None
    matchtag, stream, _rank, end = head
    parsed = _io_tail(payload, end)
    if parsed is None:
        return None
    body, encoding, eof = parsed
    data = b""
    if body is not None:
        if encoding == "base64":
            try:
                data = binascii.a2b_base64(body, strict_mode=True)
            except (binascii.Error, ValueError):
                return None
        else:
            raw = unescape(body)
            if raw is None:
                return None
            if not raw.isascii():
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return None
            data = raw
    return matchtag, stream.decode(), data, eof
