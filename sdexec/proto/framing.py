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

from sdexec.base.errors import ProtocolError
from sdexec.proto.message import Message, decode_parts, encode_parts

TYPE_CHECKING = False  # typing costs the CLI start-up time; only mypy needs it
if TYPE_CHECKING:
    from collections.abc import Sequence

FRAME_MAGIC = 0xFFEE0012
_HEADER = struct.Struct("=I" if sys.byteorder == "little" else ">I")
HEADER_SIZE = 8
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024

HANDSHAKE_OK = b"\x00"
_MAGIC_BYTES = _HEADER.pack(FRAME_MAGIC)
_LEN = struct.Struct(">I")
RECEIVE_MIN = 64 << 10  # the least free space get_buffer offers
RECEIVE_MAX = 1 << 20  # the most it offers at once for a large frame (grown as data comes)
RETAIN = 1 << 20  # an empty buffer larger than this is let go


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


def _part_size(n: int) -> bytes:
    return bytes((n,)) if n < 255 else b"\xff" + _LEN.pack(n)


def encode_frame_pieces(msg: Message, payload: Sequence[bytes]) -> list[bytes]:
    """:func:`encode_frame` of ``msg`` carrying ``b"".join(payload)``, as buffers.

    ``msg.payload`` is a placeholder (``b""``).  The frame is the returned
    buffers in order; the payload's pieces are among them as they are, so a
    ``writev`` sends a large payload without a copy into the frame.
    """
    parts = encode_parts(msg)  # [routes..., topic, b"" (the payload), PROTO]
    size = 0
    for piece in payload:
        size += len(piece)
    head = b"".join([_part_size(len(p)) + p for p in parts[:-2]]) + _part_size(size)
    proto = parts[-1]
    end = _part_size(len(proto)) + proto
    total = len(head) + size + len(end)
    return [_MAGIC_BYTES + _LEN.pack(total) + head, *payload, end]


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
    """Incremental decoder: ``feed(data)`` returns the messages completed so far.

    Bytes can also be received straight into the decoder's buffer, with no
    copy on the way (an :class:`asyncio.BufferedProtocol`, ``recv_into``):
    :meth:`get_buffer` offers free space, as much as the rest of the frame
    being received (so a large message arrives in one or two reads, and the
    read ends where the frame does), and :meth:`buffer_updated` decodes what
    was written there.  That buffer is never resized, since the caller may still hold a
    view of it; it is replaced instead, and a large one is let go once it
    is empty.  :meth:`feed` appends to a buffer with no free space, which
    ``bytearray`` grows, and drops from the front, cheaply.
    """

    __slots__ = ("_buf", "_end", "_error", "_pos", "max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._pos = 0  # decoded up to here
        self._end = 0  # received up to here; len(_buf) > _end: free space to receive into
        self._error: ProtocolError | None = None
        self.max_message = max_message

    @property
    def buffered(self) -> int:
        return self._end - self._pos

    def feed(self, data: bytes) -> list[Message]:
        return [decode_parts(p) for p in self.feed_parts(data)]

    def feed_parts(self, data: bytes) -> list[list[bytes]]:
        """Like :meth:`feed` but stops at the part lists (for relays).

        After a framing error the stream cannot be resynchronised: the
        decoder stays failed and every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        if self._end == len(buf):
            buf += data
            self._end = len(buf)
        else:  # a buffer that was received into
            n = len(data)
            self._reserve(n)
            self._buf[self._end : self._end + n] = data
            self._end += n
        out = self._decode()
        buf, pos, end = self._buf, self._pos, self._end
        if end == len(buf):  # compact: drop decoded bytes once they are the bulk
            if pos == end:
                buf.clear()
                self._pos = self._end = 0
            elif pos > 65536 and pos * 2 > end:
                del buf[:pos]
                self._pos, self._end = 0, end - pos
        return out

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Free space to receive into: at least RECEIVE_MIN bytes.

        Exactly the rest of a large frame once its header is in (so the read
        ends where the frame does, and the buffer empties), else all the
        free space there is (a read may take several small frames).
        """
        rest = self._frame_rest()
        want = max(sizehint, RECEIVE_MIN, min(rest, RECEIVE_MAX))
        self._reserve(want)
        if rest > RECEIVE_MIN:
            return memoryview(self._buf)[self._end : self._end + want]
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> list[Message]:
        """``nbytes`` were written at the start of :meth:`get_buffer`'s view."""
        if self._error is not None:
            raise self._error
        self._end += nbytes
        out = [decode_parts(p) for p in self._decode()]
        if self._pos == self._end:
            self._pos = self._end = 0
            if len(self._buf) > RETAIN:
                self._buf = bytearray()  # let a large buffer go once it is empty
        return out

    def _frame_rest(self) -> int:
        """Bytes still missing from the frame being received (0 if not known yet)."""
        pos, end = self._pos, self._end
        if end - pos < HEADER_SIZE:
            return 0
        size: int = _LEN.unpack_from(self._buf, pos + 4)[0]
        return max(0, HEADER_SIZE + min(size, self.max_message) - (end - pos))

    def _reserve(self, n: int) -> None:
        """Make room for ``n`` more bytes after ``_end``, without resizing the buffer."""
        buf, pos, end = self._buf, self._pos, self._end
        if len(buf) - end >= n:
            return
        live = end - pos
        with memoryview(buf) as view:
            if live + n <= len(buf) and pos >= live:
                buf[:live] = view[pos:end]  # slide the undecoded tail to the front
            else:
                grown = bytearray(live + n)
                grown[:live] = view[pos:end]
                self._buf = grown
        self._pos, self._end = 0, live

    def _decode(self) -> list[list[bytes]]:
        try:
            return self._frames()
        except ProtocolError as exc:
            self._error = ProtocolError(exc.message)
            raise

    def _frames(self) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        pos, end = self._pos, self._end
        with memoryview(self._buf) as view:
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
        self._pos = pos
        return out
