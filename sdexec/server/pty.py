"""A pseudo-terminal for a unit: the server holds the master, the unit gets the slave.

Theory of operation
-------------------
The wire side is :mod:`sdexec.proto.pty`.  Here, the server opens a pty
pair, sets its window size on the master, and passes the *slave* to
StartTransientUnit as the unit's standard input, output and error (three
indices of one fd, as ``systemd-run --pty`` does), with ``TTYPath`` naming
it.  systemd 252 then makes it the controlling terminal of the command,
which it has made a session leader (``setsid``; ``TIOCSCTTY`` on a stdin
that is a tty), and resets its modes to sane, cooked ones (echo, ICANON,
ISIG, ONLCR).  ``TTYReset``/``TTYVHangup`` stay off: the terminal is new,
and a vhangup would cut the master too.  Checked on systemd 252: ``tty``
prints the /dev/pts path, the process is its own session and process group
leader on that tty, Ctrl-C written to the master interrupts it, an
interactive ``bash`` has job control.

The manager keeps the fds it was passed while the unit is active, and the
server closes its own slave right after the call; so reading the master
returns ``EIO`` once the unit is inactive *and* every process of it has let
go of the terminal: after all their output.  That ``EIO`` is the stream's
EOF (:class:`~sdexec.server.pipes.OutputPipe` treats a read error as EOF).

The master is used through two descriptors, as channel sockets are: the
:class:`PtyOutput` that reads it, and a :class:`PtyInput` on a ``dup``
that writes typed input, sets the window size, and turns EOF into the
terminal's EOF character.

A pty hands its reader at most about 4 KiB per read (the line
discipline's buffer), however fast the program writes.  One response per
read would cost a message, two wake-ups and a client write per 4 KiB; so
:class:`PtyOutput` forwards a *small* read at once (an echo, a prompt: what
latency is made of) and gathers bulk output, up to BULK_LIMIT bytes or
BULK_DELAY seconds, into one response.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
from dataclasses import dataclass

from sdexec.server.pipes import READ_SIZE, InputPipe, OutputPipe, OutputSink

BULK_READ = 2048  # a read this big is bulk output, not typing
BULK_LIMIT = 256 << 10
BULK_DELAY = 0.002  # seconds


@dataclass(slots=True)
class Pty:
    """A new pty pair: the server's master, the unit's slave and its path."""

    master: int
    slave: int
    path: str

    def close_slave(self) -> None:
        if self.slave >= 0:
            with contextlib.suppress(OSError):
                os.close(self.slave)
            self.slave = -1


def set_winsize(fd: int, cols: int, rows: int) -> None:
    """TIOCSWINSZ: the kernel sends SIGWINCH to the foreground group if it changed."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def open_pty(cols: int, rows: int) -> Pty:
    """A pty pair (both ends close-on-exec) with its window size set."""
    master, slave = os.openpty()
    try:
        set_winsize(master, cols, rows)
        path = os.ttyname(slave)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return Pty(master, slave, path)


class PtyOutput(OutputPipe):
    """The server's reader of a pty master: small reads at once, bulk output gathered."""

    __slots__ = ("_pending", "_pending_size", "_timer")

    def __init__(self, stream: str, fd: int, sink: OutputSink) -> None:
        super().__init__(stream, fd, sink)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._timer: asyncio.TimerHandle | None = None

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO: every process has let go of the terminal
        if not data:
            self._flush()
            self._finish()
            return
        if not self._pending and len(data) < BULK_READ:
            self._deliver(data)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= BULK_LIMIT:
            self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(BULK_DELAY, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._deliver(data)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().close()


class PtyInput(InputPipe):
    """Typed input to a pty master (a ``dup`` of it), its window size and EOF."""

    __slots__ = ()

    def write_eof(self) -> None:
        """A terminal has no half-close: EOF is its EOF character (Ctrl-D)."""
        if self.closed:
            return
        try:
            veof = termios.tcgetattr(self.fd)[6][termios.VEOF]  # the slave's modes
        except (OSError, termios.error):
            veof = b"\x04"
        self.write(veof if isinstance(veof, bytes) else bytes([veof]))

    def resize(self, cols: int, rows: int) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):  # EIO: the terminal is already gone
                set_winsize(self.fd, cols, rows)
