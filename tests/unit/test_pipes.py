"""Server-side pipe ends (sdexec.server.pipes).

``split_utf8_tail`` is pure.  ``OutputPipe``/``InputPipe`` need a running
loop: each of those tests runs one short ``asyncio.run`` over a real
``os.pipe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.server.pipes import CreditPacer, InputPipe, OutputPipe, split_utf8_tail

MULTIBYTE = "a\u00e9\u20ac\U0001f600z"  # 1, 2, 3, 4 and 1 bytes


def char_boundaries(text: str) -> set[int]:
    """Byte offsets in ``text.encode()`` where a character starts or the text ends."""
    offsets = {0}
    n = 0
    for ch in text:
        n += len(ch.encode())
        offsets.add(n)
    return offsets


def run(coro: Callable[[], Coroutine[Any, Any, None]], timeout: float = 10.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro(), timeout)

    asyncio.run(bounded())


def unread(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


async def until_read(fd: int) -> None:
    """Let the loop run until the reader of ``fd`` has taken everything in it."""
    for _ in range(10000):
        if not unread(fd):
            return
        await asyncio.sleep(0)
    raise AssertionError("the pipe was never read")


def close_quietly(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# --- split_utf8_tail ------------------------------------------------------------------------


@given(st.text(max_size=40), st.data())
def test_split_utf8_tail_cuts_back_to_the_last_character_boundary(
    text: str, data: st.DataObject
) -> None:
    encoded = text.encode()
    k = data.draw(st.integers(0, len(encoded)), label="split")
    cut = split_utf8_tail(encoded[:k])
    assert 0 <= cut <= 3
    assert k - cut == max(b for b in char_boundaries(text) if b <= k)


@given(st.text(max_size=40), st.data())
def test_split_utf8_tail_head_always_decodes(text: str, data: st.DataObject) -> None:
    encoded = text.encode()
    k = data.draw(st.integers(0, len(encoded)), label="split")
    head = encoded[:k]
    head[: len(head) - split_utf8_tail(head)].decode("utf-8")


def test_split_utf8_tail_at_every_split_of_a_multibyte_string() -> None:
    encoded = MULTIBYTE.encode()
    boundaries = char_boundaries(MULTIBYTE)
    for k in range(len(encoded) + 1):
        cut = split_utf8_tail(encoded[:k])
        assert k - cut in boundaries, k
        assert (cut == 0) is (k in boundaries), k


@pytest.mark.parametrize("data", [b"", b"abc", "\u00e9".encode(), "\U0001f600".encode()])
def test_split_utf8_tail_complete_text_has_no_tail(data: bytes) -> None:
    assert split_utf8_tail(data) == 0


@pytest.mark.parametrize("data", [b"\x80", b"abc\x80\x80\x80", b"\xff", b"\xfe\x80"])
def test_split_utf8_tail_invalid_bytes_are_not_held_back(data: bytes) -> None:
    assert split_utf8_tail(data) == 0


# --- OutputPipe --------------------------------------------------------------------------------


class Sink:
    """Collects (stream, data, eof) calls and wakes waiters on each one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, bool]] = []
        self.changed = asyncio.Event()

    def __call__(self, stream: str, data: bytes, eof: bool) -> None:
        self.calls.append((stream, data, eof))
        self.changed.set()

    @property
    def data(self) -> bytes:
        return b"".join(d for _, d, _ in self.calls)

    @property
    def eof(self) -> bool:
        return any(e for _, _, e in self.calls)

    async def until_size(self, n: int) -> None:
        await self.until(lambda: len(self.data) >= n)

    async def until(self, cond: Callable[[], bool]) -> None:
        while not cond():
            self.changed.clear()
            await self.changed.wait()


def test_output_pipe_delivers_chunks_in_order_then_eof() -> None:
    async def main() -> None:
        r, w = os.pipe()
        sink = Sink()
        pipe = OutputPipe("stdout", r, sink)
        pipe.resume()
        expected = b""
        for i in range(20):
            chunk = f"line {i}\n".encode()
            os.write(w, chunk)
            expected += chunk
            await sink.until_size(len(expected))
        os.close(w)
        await sink.until(lambda: sink.eof)
        assert sink.data == expected
        assert sink.calls[-1] == ("stdout", b"", True)
        assert all(stream == "stdout" for stream, _, _ in sink.calls)
        assert pipe.eof

    run(main)


def test_output_pipe_never_sends_a_character_split_across_reads() -> None:
    async def main() -> None:
        r, w = os.pipe()
        sink = Sink()
        OutputPipe("stdout", r, sink).resume()
        encoded = MULTIBYTE.encode() * 3
        for b in encoded:  # one byte per read: every split point occurs
            os.write(w, bytes((b,)))
            await until_read(r)
        os.close(w)
        await sink.until(lambda: sink.eof)
        assert sink.data == encoded
        for _, data, _ in sink.calls:
            data.decode("utf-8")

    run(main)


def test_output_pipe_holds_a_partial_character_until_the_rest_arrives() -> None:
    async def main() -> None:
        r, w = os.pipe()
        sink = Sink()
        OutputPipe("stdout", r, sink).resume()
        os.write(w, b"x\xe2\x82")  # "x" and 2 of the 3 bytes of U+20AC
        await sink.until(lambda: len(sink.calls) == 1)
        assert sink.calls == [("stdout", b"x", False)]
        os.write(w, b"\xacy")
        await sink.until(lambda: len(sink.calls) == 2)
        assert sink.calls[1] == ("stdout", "\u20acy".encode(), False)
        os.close(w)
        await sink.until(lambda: sink.eof)

    run(main)


def test_output_pipe_flushes_a_held_tail_at_eof() -> None:
    async def main() -> None:
        r, w = os.pipe()
        sink = Sink()
        OutputPipe("stderr", r, sink).resume()
        os.write(w, b"ok\xf0\x9f")
        os.close(w)
        await sink.until(lambda: sink.eof)
        assert sink.data == b"ok\xf0\x9f"
        assert sink.calls[-1] == ("stderr", b"", True)

    run(main)


def test_output_pipe_does_not_read_while_paused() -> None:
    async def main() -> None:
        r, w = os.pipe()
        sink = Sink()
        pipe = OutputPipe("stdout", r, sink)
        os.write(w, b"waiting")
        for _ in range(5):
            await asyncio.sleep(0)
        assert sink.calls == []  # starts paused
        pipe.resume()
        await sink.until(lambda: sink.data == b"waiting")
        pipe.pause()
        os.write(w, b"more")
        await asyncio.sleep(0.02)
        assert sink.data == b"waiting"
        pipe.resume()
        await sink.until(lambda: sink.data == b"waitingmore")
        os.close(w)
        await sink.until(lambda: sink.eof)

    run(main)


def test_output_pipe_close_stops_delivery_and_closes_the_fd() -> None:
    async def main() -> None:
        r, w = os.pipe()
        sink = Sink()
        pipe = OutputPipe("stdout", r, sink)
        pipe.resume()
        pipe.close()
        assert pipe.eof
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")  # the read end is gone
        os.close(w)
        await asyncio.sleep(0.01)
        assert sink.calls == []

    run(main)


# --- InputPipe ---------------------------------------------------------------------------------


def read_all(fd: int) -> bytes:
    os.set_blocking(fd, True)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_input_pipe_reports_written_bytes_as_credit() -> None:
    async def main() -> None:
        r, w = os.pipe()
        credits: list[int] = []
        pipe = InputPipe(w, credits.append)
        pipe.write(b"hello")
        pipe.write(b" world")
        assert credits == [5, 6]
        assert pipe.queued == 0
        pipe.write_eof()
        assert read_all(r) == b"hello world"
        os.close(r)

    run(main)


def test_input_pipe_closes_after_write_eof() -> None:
    async def main() -> None:
        r, w = os.pipe()
        pipe = InputPipe(w)
        pipe.write(b"data")
        pipe.write_eof()
        assert pipe.closed
        assert read_all(r) == b"data"  # EOF: the write end is closed
        os.close(r)

    run(main)


def test_input_pipe_ignores_writes_after_eof() -> None:
    async def main() -> None:
        r, w = os.pipe()
        credits: list[int] = []
        pipe = InputPipe(w, credits.append)
        pipe.write_eof()
        pipe.write(b"late")
        assert credits == []
        assert read_all(r) == b""
        os.close(r)

    run(main)


def test_input_pipe_eof_waits_for_queued_data() -> None:
    async def main() -> None:
        r, w = os.pipe()
        credits: list[int] = []
        pipe = InputPipe(w, credits.append)
        data = os.urandom(1 << 20)  # far more than a pipe holds
        pipe.write(data)
        pipe.write_eof()
        assert not pipe.closed
        got = await asyncio.to_thread(read_all, r)
        os.close(r)
        assert got == data
        assert pipe.closed
        assert sum(credits) == len(data)

    run(main)


def test_input_pipe_gives_credit_back_in_steps_of_a_quarter_buffer() -> None:
    async def main() -> None:
        r, w = os.pipe()
        credits: list[int] = []
        size = 1 << 20
        pipe = InputPipe(w, credits.append, size=size)
        pipe.write(b"small")
        assert credits == []  # the client still has most of its credit
        data = os.urandom(size - 5)  # all the rest of the credit
        pipe.write(data)  # more than the pipe holds: drained as the reader reads
        got = await asyncio.to_thread(read_exactly, r, size)
        # All read means all written, and the write that took the last byte
        # reported in the same callback.
        assert got == b"small" + data and pipe.queued == 0
        # Given back in quarter steps; what is kept is less than a step, so
        # the client has more than three quarters of its buffer again.
        assert all(c >= size // 4 for c in credits)
        assert 0 <= size - sum(credits) < size // 4
        pipe.close()
        os.close(r)

    run(main)


@given(
    st.integers(1, 1 << 20),
    st.integers(1, 16),
    st.lists(st.integers(1, 1 << 17), min_size=1, max_size=8),
    st.lists(st.integers(1, 1 << 18), min_size=1, max_size=8),
)
def test_credit_pacer_never_leaves_a_greedy_client_waiting(
    size: int, buffers: int, reads: list[int], writes: list[int]
) -> None:
    """A client writing what its credit allows, a 64 KiB pipe, a process reading."""
    pacer = CreditPacer(size)
    total = buffers * size
    credit, queued, in_pipe, sent, got = size, 0, 0, 0, 0
    pieces: list[int] = []
    turn = 0

    def drain() -> None:
        nonlocal queued, in_pipe, credit
        moved = min(queued, 65536 - in_pipe)
        queued -= moved
        in_pipe += moved
        back = pacer.drained(moved)
        if back:
            pieces.append(back)
            credit += back

    while got < total:
        turn += 1
        n = min(credit, total - sent, writes[turn % len(writes)])
        if n:
            credit -= n
            sent += n
            queued += n
        else:
            assert in_pipe, "deadlock: the client has no credit, the process no input"
            step = min(in_pipe, reads[turn % len(reads)])
            in_pipe -= step
            got += step
        drain()
    assert all(p >= size // 4 for p in pieces)
    assert credit + queued <= size  # never more than the buffer


def read_exactly(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 65536))
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def test_input_pipe_credit_never_exceeds_what_the_pipe_took() -> None:
    async def main() -> None:
        r, w = os.pipe()
        credits: list[int] = []
        pipe = InputPipe(w, credits.append)
        data = b"z" * (1 << 20)
        pipe.write(data)
        # Nothing read yet: credit is what fits in the pipe, the rest is queued.
        assert 0 < sum(credits) < len(data)
        assert sum(credits) + pipe.queued == len(data)
        os.set_blocking(r, False)
        taken = 0
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(r, 65536):
                taken += len(chunk)
        assert taken == sum(credits)
        close_quietly(r)
        pipe.close()

    run(main)


def test_input_pipe_reader_gone_reports_everything_and_closes() -> None:
    async def main() -> None:
        r, w = os.pipe()
        credits: list[int] = []
        pipe = InputPipe(w, credits.append)
        os.close(r)
        pipe.write(b"nobody reads this")
        assert sum(credits) == len(b"nobody reads this")
        assert pipe.closed

    run(main)


def test_input_pipe_one_mib_to_a_slow_reader_never_blocks_the_loop() -> None:
    size = 1 << 20
    data = os.urandom(size)

    async def main() -> None:
        r, w = os.pipe()
        credits: list[int] = []
        pipe = InputPipe(w, credits.append)
        got = bytearray()

        def slow_reader() -> None:
            while chunk := os.read(r, 8192):
                got.extend(chunk)
                time.sleep(0.002)

        reader = threading.Thread(target=slow_reader)
        reader.start()
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        t0 = time.monotonic()
        pipe.write(data)
        pipe.write_eof()
        write_time = time.monotonic() - t0
        await asyncio.to_thread(reader.join)  # the reader sees EOF only once all is drained
        done.set()
        await tick
        os.close(r)
        assert pipe.closed
        assert write_time < 0.05
        assert max(gaps) < 0.1
        assert len(gaps) > 5  # the loop kept turning while the reader was slow
        assert bytes(got) == data
        assert sum(credits) == size

    run(main, timeout=30)


# --- line-buffered output (<stream>_LINE_BUFFER) ---------------------------------------


def line_pipe(data: list[bytes], limit: int = 1 << 20) -> list[tuple[str, bytes, bool]]:
    """The sink calls of a line-buffered pipe fed ``data`` in writes, then EOF."""
    calls: list[tuple[str, bytes, bool]] = []

    async def main() -> None:
        r, w = os.pipe()
        sink = Sink()
        pipe = OutputPipe("stderr", r, sink, line_buffer=limit)
        pipe.resume()
        for chunk in data:
            os.write(w, chunk)
            await until_read(r)
        os.close(w)
        await sink.until(lambda: sink.eof)
        calls.extend(sink.calls)

    run(main)
    return calls


def test_line_buffer_sends_one_chunk_per_line() -> None:
    calls = line_pipe([b"one\ntwo\nthr", b"ee\n"])
    assert calls == [
        ("stderr", b"one\n", False),
        ("stderr", b"two\n", False),
        ("stderr", b"three\n", False),
        ("stderr", b"", True),
    ]


def test_line_buffer_sends_the_last_partial_line_with_the_eof() -> None:
    assert line_pipe([b"a\nno newline"]) == [
        ("stderr", b"a\n", False),
        ("stderr", b"no newline", True),
    ]


def test_line_buffer_flushes_a_full_buffer_without_a_newline() -> None:
    calls = line_pipe([b"x" * 10, b"y\n"], limit=8)
    assert b"".join(d for _, d, _ in calls) == b"x" * 10 + b"y\n"
    assert calls[0] == ("stderr", b"x" * 10, False)  # at least the limit: sent as it is


def test_line_buffer_never_cuts_a_character_when_flushing_a_full_buffer() -> None:
    calls = line_pipe(["é".encode() * 5], limit=5)
    for _, data, _ in calls:
        data.decode("utf-8")
