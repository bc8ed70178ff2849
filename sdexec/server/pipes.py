"""Non-blocking pipe ends owned by the server: process output in, stdin out.

Theory of operation
-------------------
:class:`OutputPipe` watches the read end of a unit's stdout/stderr pipe with
``loop.add_reader`` and hands each chunk (one ``os.read``) to a sink.  The
pipe is enlarged to PIPE_SIZE with ``F_SETPIPE_SZ`` and read READ_SIZE bytes
at a time: a process that writes fast fills big chunks between two wake-ups
of the loop, and each chunk becomes one output response, so the per-message
cost (JSON, framing, a send) is paid per 512 KiB rather than per 4-64 KiB.
(Measured: 512 KiB beats 256 KiB on both ends, the client most; 1 MiB
chunks no longer fit the caches and base64 slows down.)
Text is forwarded as UTF-8 when it is valid; a multi-byte character split
across two reads is held back (at most 3 bytes) and joined to the next read,
so a text stream never degrades to base64 at a chunk boundary.
``pause()``/``resume()`` remove and re-add the reader: that is the whole of
output back-pressure, since a process writing to a full pipe simply blocks.

A pipe may be read before its chunks may be sent (``hold``): a unit's
process runs, and writes, before the server has learnt that it started, and
no ``output`` may precede ``started``.  Read from the start, its chunks keep
the pieces the process wrote them in (as the client sees them from any
other RFC 42 server); held, they wait, in order, for :meth:`OutputPipe.release`.
Had the pipe been left unread until then, everything written meanwhile
would come out of the pipe as one chunk (up to PIPE_SIZE is held; past
that the pipe is paused).

Line-buffered (``<stream>_LINE_BUFFER``, which Flux clients expect by
default): each complete line is one chunk, a partial line is held until its
newline comes or it fills the stream's buffer size, and what is left at EOF
goes with the EOF.  job-exec turns each output response into one eventlog
entry, so a line is the unit it expects.

:class:`InputPipe` owns the write end of a unit's stdin.  Data is queued and
written with non-blocking ``os.write``; when the pipe is full a writer
callback waits for room.  Every byte drained into the pipe is reported to a
credit callback, which is how RFC 42 ``add-credit`` responses are paced:
in steps of a quarter of the buffer (:class:`CreditPacer`), so a process
that reads a little at a time does not make the client send its input a
little at a time.
The event loop never blocks on either end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
from collections.abc import Callable

PIPE_SIZE = 1 << 20  # the default /proc/sys/fs/pipe-max-size: allowed for any user
READ_SIZE = 512 << 10

OutputSink = Callable[[str, bytes, bool], None]  # (stream, data, eof)


def split_utf8_tail(data: bytes) -> int:
    """How many trailing bytes of ``data`` are an incomplete UTF-8 sequence (0-3)."""
    n = len(data)
    for back in range(1, min(4, n + 1)):
        b = data[n - back]
        if b & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = (
                2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
            )
            return back if need > back else 0
    return 0


class OutputPipe:
    """The server's read end of a process output stream."""

    __slots__ = (
        "_held",
        "_held_size",
        "_line_limit",
        "_loop",
        "_tail",
        "eof",
        "fd",
        "paused",
        "sink",
        "stream",
    )

    def __init__(
        self,
        stream: str,
        fd: int,
        sink: OutputSink,
        *,
        line_buffer: int | None = None,
        hold: bool = False,
    ) -> None:
        """``line_buffer``: the buffer size of a line-buffered stream (None: raw).
        ``hold``: read from now on, but keep the chunks until :meth:`release`."""
        self.stream = stream
        self.fd = fd
        self.sink = sink
        self.eof = False
        self.paused = True
        self._tail = b""
        self._line_limit = line_buffer
        self._held: list[tuple[bytes, bool]] | None = [] if hold else None
        self._held_size = 0
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        with contextlib.suppress(OSError):  # EPERM past the user's pipe quota: keep 64 KiB
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        if hold:
            self.resume()

    def release(self) -> None:
        """Send the held chunks, in order, and every chunk from now on; read on."""
        held, self._held = self._held, None
        self._held_size = 0
        for data, eof in held or ():
            self.sink(self.stream, data, eof)
        self.resume()

    def _emit(self, data: bytes, eof: bool) -> None:
        held = self._held
        if held is None:
            self.sink(self.stream, data, eof)
            return
        held.append((data, eof))
        self._held_size += len(data)
        if self._held_size >= PIPE_SIZE:
            self.pause()  # as much as the pipe holds: let the process wait for release()

    def resume(self) -> None:
        if self.paused and not self.eof:
            self.paused = False
            self._loop.add_reader(self.fd, self._on_readable)

    def pause(self) -> None:
        if not self.paused and not self.eof:
            self.paused = True
            self._loop.remove_reader(self.fd)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._finish()
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        """Hand ``data`` to the sink, holding back a split UTF-8 character."""
        if self._tail:
            data = self._tail + data
            self._tail = b""
        if self._line_limit is not None:
            self._lines(data)
            return
        cut = split_utf8_tail(data)
        if cut:
            self._tail = data[-cut:]
            data = data[:-cut]
            if not data:
                return
        self._emit(data, False)

    def _lines(self, data: bytes) -> None:
        """Line mode: one chunk per complete line; hold the rest (up to the limit)."""
        assert self._line_limit is not None
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._emit(data[start : end + 1], False)
            start = end + 1
        rest = data[start:]
        if len(rest) >= self._line_limit:  # a full buffer without a newline goes as it is
            cut = split_utf8_tail(rest)
            self._emit(rest[: len(rest) - cut], False)
            rest = rest[len(rest) - cut :]
        self._tail = rest

    def _finish(self) -> None:
        tail, self._tail = self._tail, b""
        self.close()
        if tail and self._line_limit is not None:
            self._emit(tail, True)  # the last partial line goes with the EOF
            return
        if tail:
            self._emit(tail, False)
        self._emit(b"", True)

    def close(self) -> None:
        if not self.eof:
            self.eof = True
            if not self.paused:
                self._loop.remove_reader(self.fd)
            self.paused = True
            with contextlib.suppress(OSError):
                os.close(self.fd)


class CreditPacer:
    """When drained input goes back to the client as credit (sans-IO).

    Credit goes back in steps of at least a quarter of the buffer.  Giving
    back each drained piece at once would keep the input cut for good into
    the pieces of the first partial pipe writes: a client writes what its
    credit allows, the pipe takes each write whole, and its credit comes
    back alone, as small as it went.

    Nothing waits forever.  By RFC 42's count, what the client may still
    send plus what is queued plus what drained but was kept back is always
    the whole buffer; so a client with less than a step of credit either
    has data queued (the process reading it drains more) or has a step or
    more kept back, which has already been given.  Only a client that
    insisted on more than three quarters of the buffer for one write could
    wait.  A buffer under 4 bytes has no steps.
    """

    __slots__ = ("_unreported", "step")

    def __init__(self, size: int) -> None:
        self.step = size // 4
        self._unreported = 0

    def drained(self, n: int) -> int:
        """``n`` more bytes left the buffer; the credit to give back now (0: none yet)."""
        n += self._unreported
        if n and n >= self.step:
            self._unreported = 0
            return n
        self._unreported = n
        return 0


class InputPipe:
    """The server's write end of a process's stdin (or a channel)."""

    __slots__ = (
        "_loop",
        "_pacer",
        "_queue",
        "_waiting",
        "closed",
        "credit_cb",
        "eof_pending",
        "fd",
        "queued",
    )

    def __init__(
        self, fd: int, credit_cb: Callable[[int], None] | None = None, *, size: int = 0
    ) -> None:
        """``size``: the buffer the client was promised (stdin_BUFSIZE), its first credit."""
        self.fd = fd
        self.credit_cb = credit_cb
        self.queued = 0
        self.closed = False
        self.eof_pending = False
        self._queue: collections.deque[memoryview] = collections.deque()
        self._waiting = False
        self._pacer = CreditPacer(size)
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)

    def write(self, data: bytes) -> None:
        if self.closed or self.eof_pending or not data:
            return
        self._queue.append(memoryview(data))
        self.queued += len(data)
        if not self._waiting:
            self._drain()

    def write_eof(self) -> None:
        if self.closed:
            return
        self.eof_pending = True
        if not self._queue:
            self.close()

    def _drain(self) -> None:
        drained = 0
        queue = self._queue
        while queue:
            chunk = queue[0]
            try:
                n = os.write(self.fd, chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # EPIPE: the process closed its stdin; drop the rest
                drained += self.queued
                queue.clear()
                self.queued = 0
                self._report(drained)
                self.close()
                return
            drained += n
            self.queued -= n
            if n == len(chunk):
                queue.popleft()
            else:
                queue[0] = chunk[n:]
        if queue and not self._waiting:
            self._waiting = True
            self._loop.add_writer(self.fd, self._drain)
        elif not queue and self._waiting:
            self._waiting = False
            self._loop.remove_writer(self.fd)
        self._report(drained)
        if not queue and self.eof_pending:
            self.close()

    def _report(self, n: int) -> None:
        credit = self._pacer.drained(n)
        if credit and self.credit_cb is not None:
            self.credit_cb(credit)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._waiting:
            self._waiting = False
            self._loop.remove_writer(self.fd)
        self._queue.clear()
        self.queued = 0
        with contextlib.suppress(OSError):
            os.close(self.fd)
