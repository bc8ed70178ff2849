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

A *background* terminal (``exec --bg --pty``) must not depend on the
server, so its master goes to a holder of its own instead, a unit running
:mod:`sdexec.unit.pty_holder`, which keeps reading it and keeps the screen;
:func:`holder_unit` prepares that unit, and :class:`TerminalLink` is one
attach stream's connection to the holder (the server connects only while
someone is attached, and so needs nothing to reconnect after a restart).
Its slave does not go to systemd as above but through the exec helper
(:func:`sdexec.server.channels.terminal_via_helper`): the manager would
keep a copy for as long as the unit is active, which for a waitable unit
(RemainAfterExit) outlasts the command, and the master would never see
its EIO.

A pty hands its reader at most about 4 KiB per read (the line
discipline's buffer), however fast the program writes.  One response per
read would cost a message, two wake-ups and a client write per 4 KiB; so
:class:`PtyOutput` forwards a *small* read at once (an echo, a prompt: what
latency is made of) and gathers bulk output, up to BULK_LIMIT bytes or
BULK_DELAY seconds, into one response.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import json
import os
import socket
import struct
import sys
import termios
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdexec.base.errors import SdexecError
from sdexec.server.channels import HELPER_PYTHON_FLAGS, helper_script
from sdexec.server.pipes import (
    READ_SIZE,
    CreditPacer,
    InputPipe,
    OutputPipe,
    OutputSink,
    split_utf8_tail,
)
from sdexec.systemd import properties
from sdexec.unit import pty_holder

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


# --- background terminals: the holder (sdexec.unit.pty_holder) -------------------------

HOLDER_PATH = str(Path(pty_holder.__file__).resolve())
#: The longest path a sockaddr_un takes; longer ones go through /proc/self/fd.
SUN_PATH_MAX = 107
#: Tries of a connect refused because the holder's backlog is full (10 ms apart).
CONNECT_TRIES = 100
RECV_SIZE = 2 * pty_holder.PACKET_MAX


@dataclass(slots=True)
class Holder:
    """A background terminal's holder: its unit and the socket it serves."""

    unit: str
    path: str


def _address(path: str) -> tuple[str, int]:
    """A sockaddr path for ``path`` (and a directory fd to close, or -1).

    A path too long for ``sockaddr_un`` is reached through its directory's
    fd: ``/proc/self/fd/N/NAME`` is short and names the same file.
    """
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path, -1
    dirfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dirfd}/{os.path.basename(path)}", dirfd


def holder_listener(path: str) -> socket.socket:
    """The holder's listening socket, bound at ``path`` (its directory made 0700)."""
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a holder killed before it could remove it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        address, dirfd = _address(path)
        try:
            sock.bind(address)
        finally:
            if dirfd >= 0:
                os.close(dirfd)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock


def holder_unit(
    master: int, listener: socket.socket, holder: Holder, *, linger: bool, description: str
) -> tuple[list[list[object]], list[int]]:
    """The holder's StartTransientUnit properties and fds (to pass, then close).

    Queues the control message (:data:`~sdexec.unit.pty_holder.MAGIC`, the
    master and the listener) on the socketpair that becomes the holder's
    stdin, so the holder never waits for the server.  The caller still owns
    ``master`` and ``listener`` (the message holds its own references).
    """
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        socket.send_fds(mine, [pty_holder.MAGIC], [master, listener.fileno()])
    except BaseException:
        theirs.close()
        raise
    finally:
        mine.close()  # the message stays queued for the holder
    argv = [
        sys.executable,
        *HELPER_PYTHON_FLAGS,
        helper_script(HOLDER_PATH),
        *(["--linger"] if linger else []),
        holder.path,
    ]
    spec = properties.UnitSpec(argv=argv, description=description, stdin_fd=0)
    fd = theirs.detach()
    try:
        return spec.properties(), [fd]
    except BaseException:
        os.close(fd)
        raise


class TerminalLink:
    """One attach stream's connection to a background terminal's holder.

    Packets as the holder defines them (:mod:`sdexec.unit.pty_holder`).
    Input is queued until the connection is open and then sent as the
    socket takes it; what it takes comes back as credit (``credit_cb``),
    paced like a pipe's (:class:`~sdexec.server.pipes.CreditPacer`).
    """

    __slots__ = (
        "_loop",
        "_pacer",
        "_queue",
        "_reader",
        "_tail",
        "_writing",
        "closed",
        "connected",
        "credit_cb",
        "path",
        "sock",
    )

    def __init__(
        self, path: str, credit_cb: Callable[[int], None] | None = None, size: int = 0
    ) -> None:
        self.path = path
        self.credit_cb = credit_cb
        self.sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        self.connected = False
        self.closed = False
        self._queue: collections.deque[bytes] = collections.deque()
        self._writing = False
        self._reader: asyncio.Future[None] | None = None
        self._pacer = CreditPacer(size)
        self._tail = b""
        self._loop = asyncio.get_running_loop()

    async def open(self, hello: dict[str, Any]) -> None:
        """Connect and say hello; OSError if the holder cannot be reached."""
        for _ in range(CONNECT_TRIES):
            if self.closed:
                raise SdexecError(errno.ECONNABORTED, "the attach ended")
            address, dirfd = _address(self.path)
            try:
                self.sock.connect(address)
            except BlockingIOError:  # the holder's backlog is full
                await asyncio.sleep(0.01)
                continue
            finally:
                if dirfd >= 0:
                    os.close(dirfd)
            break
        else:
            raise SdexecError(errno.EAGAIN, "the terminal's holder does not accept connections")
        self.connected = True
        self._queue.appendleft(b"h" + json.dumps(hello).encode())
        self._drain()

    async def receive(self) -> bytes:
        """The next packet from the holder; empty once the connection is over."""
        while not self.closed:
            try:
                return self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return b""
            fd = self.sock.fileno()
            self._reader = self._loop.create_future()
            self._loop.add_reader(fd, self._readable)
            try:
                await self._reader
            finally:
                if not self.closed:
                    self._loop.remove_reader(fd)
                self._reader = None
        return b""

    def text(self, data: bytes) -> bytes:
        """``data`` without a UTF-8 character it cuts (kept for the next call)."""
        if self._tail:
            data = self._tail + data
            self._tail = b""
        cut = split_utf8_tail(data)
        if cut:
            self._tail, data = data[-cut:], data[:-cut]
        return data

    def flush_text(self) -> bytes:
        tail, self._tail = self._tail, b""
        return tail

    def _readable(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    # --- input ----------------------------------------------------------------------

    def send_input(self, data: bytes) -> None:
        step = pty_holder.PACKET_MAX - 1
        for i in range(0, len(data), step):
            self._send(b"i" + data[i : i + step])

    def send_winsize(self, cols: int, rows: int) -> None:
        self._send(b"w%dx%d" % (cols, rows))

    def send_eof(self) -> None:
        self._send(b"d")

    def _send(self, packet: bytes) -> None:
        if self.closed:
            return
        self._queue.append(packet)
        if self.connected and not self._writing:
            self._drain()

    def _drain(self) -> None:
        typed = 0
        queue = self._queue
        while queue:
            try:
                self.sock.send(queue[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the holder is gone: the stream ends with its EOF
                queue.clear()
                break
            packet = queue.popleft()
            if packet[:1] == b"i":
                typed += len(packet) - 1
        if queue and not self._writing:
            self._writing = True
            self._loop.add_writer(self.sock.fileno(), self._drain)
        elif not queue and self._writing:
            self._writing = False
            self._loop.remove_writer(self.sock.fileno())
        credit = self._pacer.drained(typed)
        if credit and self.credit_cb is not None:
            self.credit_cb(credit)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fd = self.sock.fileno()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(fd)
        if self._reader is not None:
            self._loop.remove_reader(fd)
            if not self._reader.done():
                self._reader.set_result(None)
        self._queue.clear()
        self.sock.close()


async def holder_text(path: str) -> bytes:
    """The screen of the terminal at ``path`` as plain text (empty if it is gone)."""
    link = TerminalLink(path)
    try:
        try:
            await link.open({"mode": "text"})
        except OSError:
            return b""
        parts: list[bytes] = []
        while True:
            packet = await link.receive()
            if not packet:
                return b"".join(parts)
            if packet[:1] == b"t":
                parts.append(packet[1:])
    finally:
        link.close()


async def release_holder(path: str) -> bool:
    """Tell a lingering holder to go once its terminal is closed; False if it is gone."""
    link = TerminalLink(path)
    try:
        await link.open({"mode": "release"})
        while await link.receive():
            pass
    except OSError:
        return False
    finally:
        link.close()
    return True
