"""Flux ``local://`` stream framing (RFC 3 "Message Framing and Security").

Theory of operation
-------------------
After ``accept()`` the server writes one byte: 0 accepts the peer, any other
value is an errno (EPERM for a uid it refuses) and the connection ends.
From then on each message travels as::

    magic   4 bytes  0xffee0012 in host byte order (as flux-core writes it)
    length  4 bytes  big endian, size of the encoded parts that follow
    parts            each: 1-byte size (<255), or 0xff + 4-byte BE size; data

with the PROTO part last.  :class:`FrameDecoder` is fed bytes and yields
messages; :func:`encode_frame` turns a message into bytes.  Both are sans-IO.

A decoder error is fatal for its stream (there is no way to resynchronise a
byte stream after a bad header), so the transport closes only that
connection.
"""

from __future__ import annotations

import struct
import sys

from sdexec.errors import ProtocolError
from sdexec.proto.message import Message, decode_parts, encode_parts

FRAME_MAGIC = 0xFFEE0012
_HEADER = struct.Struct("=I" if sys.byteorder == "little" else ">I")
HEADER_SIZE = 8
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024

HANDSHAKE_OK = b"\x00"
_MAGIC_BYTES = _HEADER.pack(FRAME_MAGIC)
_LEN = struct.Struct(">I")


def encode_parts_stream(parts: list[bytes]) -> bytes:
    """Frame a list of parts (header included)."""
    chunks: list[bytes] = []
    size = 0
    for part in parts:
        n = len(part)
        if n < 255:
            chunks.append(bytes((n,)))
            size += 1
        else:
            chunks.append(b"\xff" + _LEN.pack(n))
            size += 5
        chunks.append(part)
        size += n
    return b"".join([_MAGIC_BYTES, _LEN.pack(size), *chunks])


def encode_frame(msg: Message) -> bytes:
    """One message as the bytes that go on a ``local://`` stream."""
    return encode_parts_stream(encode_parts(msg))


def split_parts(body: bytes | memoryview) -> list[bytes]:
    """Split an encoded message body into parts (EPROTO if truncated)."""
    parts: list[bytes] = []
    view = body if isinstance(body, memoryview) else memoryview(body)
    i = 0
    end = len(view)
    while i < end:
        n = view[i]
        i += 1
        if n == 255:
            if i + 4 > end:
                raise ProtocolError("truncated part size")
            n = _LEN.unpack_from(view, i)[0]
            i += 4
        if i + n > end:
            raise ProtocolError("truncated message part")
        parts.append(bytes(view[i : i + n]))
        i += n
    return parts


class FrameDecoder:
    """Incremental decoder: ``feed(data)`` returns the messages completed so far."""

    __slots__ = ("_buf", "_error", "_pos", "max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None
        self.max_message = max_message

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Message]:
        return [decode_parts(p) for p in self.feed_parts(data)]

    def feed_parts(self, data: bytes) -> list[list[bytes]]:
        """Like :meth:`feed` but stops at the part lists (for relays).

        After a framing error the stream cannot be resynchronised: the
        decoder stays failed and every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._feed_parts(data)
        except ProtocolError as exc:
            self._error = ProtocolError(exc.message)
            raise

    def _feed_parts(self, data: bytes) -> list[list[bytes]]:
        buf = self._buf
        buf += data
        out: list[list[bytes]] = []
        pos = self._pos
        end = len(buf)
        with memoryview(buf) as view:
            while end - pos >= HEADER_SIZE:
                if _HEADER.unpack_from(view, pos)[0] != FRAME_MAGIC:
                    raise ProtocolError("bad frame magic")
                size = _LEN.unpack_from(view, pos + 4)[0]
                if size > self.max_message:
                    raise ProtocolError(f"message of {size} bytes exceeds the limit")
                if end - pos - HEADER_SIZE < size:
                    break
                start = pos + HEADER_SIZE
                out.append(split_parts(view[start : start + size]))
                pos = start + size
        # Compact: drop consumed bytes once they are the bulk of the buffer.
        if pos == end:
            buf.clear()
            pos = 0
        elif pos > 65536 and pos * 2 > end:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return out
