"""Attached to a background terminal: the blocking loop of ``sdexec attach`` (sans asyncio).

Theory of operation
-------------------
``sdexec attach`` sends one streaming ``sdexec.attach``; when the
``attached`` response says ``"pty": true`` the process is a background
terminal (:mod:`sdexec.proto.pty`) and :func:`run_terminal_attach` takes
the stream over.  The server first sends a redraw of the terminal's screen
as ``stdout`` output, then what the program writes, which go to the local
terminal as they come.

The *writer* (``"stdin": true`` in ``attached``: the attach asked for the
terminal, with ``"terminal": true``) has its local terminal raw, as
``exec --pty`` does: its keys go to the remote terminal as ``stdin``
writes, within the credit the server gives (RFC 42 "write"), and SIGWINCH
sends the window size (``pty.winsize``).  A *reader* (``--read-only``, or
stdin not a terminal) sends nothing; with a terminal on stdin it is raw
too, so that its keys do not echo into the remote screen, and Ctrl-C
leaves.

Both leave with the detach key (:func:`~sdexec.client.terminal.parse_detach_key`),
which never reaches the remote terminal, and on SIGTERM, SIGHUP or SIGINT:
the process goes on in the background.  A writer whose terminal another
attach takes over gets EBUSY after ``attached``: it leaves as well.  The
stream's normal end (``finished``, ENODATA) means the program ended.
"""

from __future__ import annotations

import errno
import os
import select

from sdexec.base.errors import SdexecError
from sdexec.client.blocking import _write_all
from sdexec.client.exec import (
    ADD_CREDIT,
    FINISHED,
    OUTPUT,
    STDIN,
    WRITE_TOPIC,
    StdinCredit,
    encode_io,
)
from sdexec.client.rpc import RemoteError, response_payload
from sdexec.proto import pty
from sdexec.proto.iodata import decode_io_data
from sdexec.proto.jsonio import write_payload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from sdexec.client.blocking import BlockingHandle, SignalPipe
    from sdexec.client.terminal import AltScreen
    from sdexec.proto.message import Message
# The C module: ``signal`` imports ``enum``, ~5 ms of every command's start-up.
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal

_POLLIN = select.POLLIN | select.POLLHUP | select.POLLERR
_READ_SIZE = 64 * 1024
CTRL_C = b"\x03"

# How an attach to a terminal ended (AttachEnd.how).
ENDED = "finished"  # the program ended: AttachEnd.status
DETACHED = "detached"  # the detach key, or the local terminal went away
TAKEN_OVER = "taken-over"  # another attach took the terminal: AttachEnd.text
SIGNALLED = "signal"  # SIGTERM, SIGHUP or SIGINT: AttachEnd.signum


class AttachEnd:
    """Why :func:`run_terminal_attach` returned."""

    __slots__ = ("how", "signum", "status", "text")

    def __init__(self, how: str, *, status: int = 0, signum: int = 0, text: str = "") -> None:
        self.how = how
        self.status = status
        self.signum = signum
        self.text = text


def run_terminal_attach(
    handle: BlockingHandle,
    tag: int,
    *,
    writer: bool,
    stdin_fd: int | None,
    stdout_fd: int = 1,
    detach_key: bytes | None,
    signals: SignalPipe | None = None,
    winsize: Callable[[], tuple[int, int]] | None = None,
    on_cont: Callable[[], None] | None = None,
    alt: AltScreen | None = None,
) -> AttachEnd:
    """Follow the attach stream ``tag`` (past its ``attached``) until it ends or we leave.

    ``stdin_fd``: the local terminal's keys (None: none are read);
    ``winsize``: the local window size, sent at SIGWINCH and SIGCONT by a
    writer; ``on_cont``: called at SIGCONT (to make the terminal raw
    again); ``alt``: fed with the output, to know how to leave.
    Raises RemoteError for an error response other than a take-over.
    """
    loop = _Loop(handle, tag, writer, stdin_fd, stdout_fd, detach_key, alt)
    loop.winsize = winsize
    loop.on_cont = on_cont
    return loop.run(signals)


class _Loop:
    def __init__(
        self,
        handle: BlockingHandle,
        tag: int,
        writer: bool,
        stdin_fd: int | None,
        stdout_fd: int,
        detach_key: bytes | None,
        alt: AltScreen | None,
    ) -> None:
        self.handle = handle
        self.tag = tag
        self.writer = writer
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.detach_key = detach_key
        self.alt = alt
        self.credit = StdinCredit(borrow=0)
        self.status: int | None = None
        self.poller = select.poll()
        self.polling_stdin = False
        self.winsize: Callable[[], tuple[int, int]] | None = None
        self.on_cont: Callable[[], None] | None = None

    def run(self, signals: SignalPipe | None) -> AttachEnd:
        sock_fd = self.handle.fileno()
        self.poller.register(sock_fd, _POLLIN)
        sig_fd = -1
        if signals is not None:
            sig_fd = signals.fileno()
            self.poller.register(sig_fd, select.POLLIN)
        while True:
            while self.handle.pending:  # read with the attached response, not yet handled
                for msg in self.handle.receive():
                    queued = self._on_response(msg)
                    if queued is not None:
                        return queued
            self._poll_stdin()
            for fd, _ in sorted(self.poller.poll(), key=lambda event: event[0] != sig_fd):
                end: AttachEnd | None = None
                if fd == sock_fd:
                    for msg in self.handle.receive():
                        end = end or self._on_response(msg)
                elif signals is not None and fd == sig_fd:
                    for signum in signals.drain():
                        end = end or self._on_signal(signum)
                elif fd == self.stdin_fd and self.polling_stdin:
                    end = self._on_keys()
                if end is not None:
                    return end

    def _poll_stdin(self) -> None:
        wanted = self.stdin_fd is not None and (not self.writer or self.credit.available > 0)
        if wanted != self.polling_stdin and self.stdin_fd is not None:
            if wanted:
                self.poller.register(self.stdin_fd, _POLLIN)
            else:
                self.poller.unregister(self.stdin_fd)
            self.polling_stdin = wanted

    def _on_response(self, msg: Message) -> AttachEnd | None:
        if msg.matchtag != self.tag:
            return None
        if msg.errnum == errno.ENODATA:
            if self.status is None:
                raise SdexecError(errno.EPROTO, "the stream ended without a finished response")
            return AttachEnd(ENDED, status=self.status)
        if msg.errnum == errno.EBUSY:
            return AttachEnd(TAKEN_OVER, text=msg.error_text() or "")
        if msg.errnum:
            raise RemoteError(msg.errnum, msg.error_text())
        resp = response_payload(msg)
        kind = resp.get("type")
        if kind == OUTPUT:
            io = resp.get("io") or {}
            data = decode_io_data(io)
            if data and io.get("stream", "stdout") in ("stdout", "stderr"):
                if self.alt is not None:
                    self.alt.feed(data)
                _write_all(self.stdout_fd, data)
        elif kind == ADD_CREDIT:
            n = (resp.get("channels") or {}).get(STDIN)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                self.credit.add(n)
        elif kind == FINISHED and isinstance(resp.get("status"), int):
            self.status = int(resp["status"])
        return None

    def _on_signal(self, signum: int) -> AttachEnd | None:
        if signum == _signal.SIGCONT:
            if self.on_cont is not None:
                self.on_cont()
            self._send_winsize()
        elif signum == _signal.SIGWINCH:
            self._send_winsize()
        elif signum in (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT):
            return AttachEnd(SIGNALLED, signum=signum)
        return None

    def _send_winsize(self) -> None:
        if self.writer and self.winsize is not None and self.status is None:
            text = pty.format_winsize(*self.winsize()).encode()
            io = encode_io(pty.WINSIZE_STREAM, text)
            self.handle.send(WRITE_TOPIC, {"matchtag": self.tag, "io": io})

    def _on_keys(self) -> AttachEnd | None:
        assert self.stdin_fd is not None
        size = min(self.credit.available, _READ_SIZE) if self.writer else _READ_SIZE
        try:
            data = os.read(self.stdin_fd, size)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:  # the local terminal is gone
            return AttachEnd(DETACHED)
        cut = data.find(self.detach_key) if self.detach_key is not None else -1
        if not self.writer:
            if cut >= 0 or CTRL_C in data:
                return AttachEnd(DETACHED)
            return None
        keys = data if cut < 0 else data[:cut]
        if keys and self.status is None:
            self.credit.charge(len(keys))
            self.handle.send(WRITE_TOPIC, write_payload(self.tag, STDIN, "0", keys, False))
        return AttachEnd(DETACHED) if cut >= 0 else None
