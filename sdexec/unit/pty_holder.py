"""The terminal holder: keeps a background process's pseudo-terminal and its screen.

Theory of operation
-------------------
A background process must never depend on the server (its output must not
be a pipe or a pty whose only reader is the server).  So for ``exec --bg
--pty`` the server starts this program as a transient unit of its own
(``python -I -S pty_holder.py [--linger] SOCKET``) next to the command's
unit, and hands it, before either unit starts, the pty's *master* and a
listening ``SOCK_SEQPACKET`` UNIX socket (bound by the server at SOCKET, in
its state directory): one message on the holder's stdin, a private
``SOCK_SEQPACKET`` socketpair, data :data:`MAGIC`, the two fds as
``SCM_RIGHTS`` (the way :mod:`sdexec.unit.channel_exec` gets its fds).  The
command's unit gets the pty's slave as its stdio, as with a foreground
``--pty``.  The holder's stdin is a socket, not a tty, so systemd makes no
controlling terminal of the master for it.

From then on the holder, and not the server, is the terminal's other end:

* it reads the master all the time, whoever is attached, so the program
  never blocks on its output, and it keeps a model of the screen
  (:class:`~sdexec.unit.pty_screen.Screen`: a small VT100/xterm emulator: the main and alternate
  screens with their characters and colours, the cursor, scroll region,
  tab stops, character sets and the modes that change what keys send);
* it serves any number of *clients* (the server's attach streams, one
  connection each) on the listening socket, one ``SOCK_SEQPACKET`` packet
  per message: a type byte, then the payload;
* it writes what a client types to the master, and sets the window size.

The server connects once per attach stream and only then: nobody attached
means no connection, and a restarted server simply connects again.

Client to holder:

``h`` + JSON   the first packet: ``{"mode": "attach", "writer": BOOL,
               "winsize": [COLS, ROWS]}`` (the window size is set *before* the
               screen is drawn, so the screen fits the attaching terminal);
               ``{"mode": "text"}`` (the screen as plain text, then the
               connection ends); ``{"mode": "release"}`` (stop lingering, below).
``i`` + bytes  typed input, to the master.
``w`` + ``COLSxROWS``  a new window size (SIGWINCH to the program).
``d``          EOF: the terminal's EOF character (a terminal has no half-close).

Holder to client:

``o`` + bytes  terminal output: first a redraw of the current screen
               (:meth:`Screen.render`), then everything the program writes.
``t`` + text   the screen as text (mode ``text``).
``e``          the terminal is closed: every process let go of it (EIO on the
               master) and all its output has been sent.

Flow control: input is read from a client only while less than
:data:`INPUT_LIMIT` bytes wait for the master (so a client that types faster
than the program reads is held back, down to the server's credit); output
for a client that falls :data:`CLIENT_LIMIT` bytes behind is dropped, and
once it catches up it gets a fresh redraw instead, as tmux does: the screen
is what matters, not every byte that crossed it.

While no writer is attached, the holder answers the terminal queries a
program may wait for (device attributes, status and cursor position
reports) from its model; with a writer attached, the writer's terminal
answers them.

End: once the master reports EIO (the command's unit is inactive and no
process has the slave open) the holder sends the remaining output and
``e`` to each client and exits, or, with ``--linger`` (a waitable process,
whose status waits for ``wait``), keeps the last screen for later attaches
until a client sends ``release`` (the server does when it reaps the
process) or it gets SIGTERM.  SIGTERM closes the master: the terminal hangs
up, as when an ssh connection drops.  The socket file is removed on exit.

Only clients of the holder's own uid (or root) are served; the socket lives
in the server's state directory (mode 0700) anyway.

The module must stay runnable with no package context: it is run as a
plain file (or its bytecode), and imports nothing from :mod:`sdexec`; its
screen model, :mod:`sdexec.unit.pty_screen`, is a sibling file, imported
from the holder's own directory when it runs as a program.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:  # imported: sdexec.unit.pty_holder (the server, tests)
    from .pty_screen import Screen
else:  # a program (python -I -S FILE): its directory is not on sys.path
    _HERE = os.path.dirname(os.path.abspath(__file__))
    if os.path.basename(_HERE) == "__pycache__":  # run as its bytecode (helper_script)
        _HERE = os.path.dirname(_HERE)
    sys.path.insert(0, _HERE)
    from pty_screen import Screen

MAGIC = b"sdexec-pty-holder/1"
#: Typed input waiting for the master beyond which clients are not read.
INPUT_LIMIT = 64 << 10
#: Output queued for one client beyond which it is dropped and redrawn later.
CLIENT_LIMIT = 2 << 20
#: The largest packet sent (a read of the master, or a piece of a redraw).
PACKET_MAX = 64 << 10
#: How long a holder that is done waits for slow clients to take the rest.
DRAIN_GRACE = 10.0
#: Output read but not yet applied to the model is applied this much at a time,
#: for about PARSE_SLICE seconds between two reads of the master.
PARSE_STEP = 4 << 10
PARSE_SLICE = 0.002
#: Reads of the master in one turn of the loop, at most.
READS_PER_TURN = 64
#: When that much is waiting, the model skips to the last SKIP_TAIL bytes of it.
FLOOD_LIMIT = 4 << 20
SKIP_TAIL = 64 << 10


# --- the packets (pure) --------------------------------------------------------------


def parse_winsize(text: str) -> tuple[int, int] | None:
    """``(cols, rows)`` from ``COLSxROWS`` (as sdexec.proto.pty), None if it is not one."""
    cols, sep, rows = text.strip().lower().partition("x")
    if sep and cols.isdigit() and rows.isdigit() and (cols + rows).isascii():
        c, r = int(cols), int(rows)
        if 0 < c <= 9999 and 0 < r <= 9999:
            return c, r
    return None


def split_packets(kind: bytes, data: bytes, size: int = PACKET_MAX) -> list[bytes]:
    """``data`` as packets of type ``kind``, each at most ``size`` bytes long."""
    step = size - len(kind)
    return [kind + data[i : i + step] for i in range(0, len(data), step)] or [kind]


# --- the program -----------------------------------------------------------------------


class HolderError(Exception):
    """The holder cannot start (a bad or missing control message)."""


def receive(control_fd: int) -> tuple[int, int]:
    """(master, listener) from the one control message on ``control_fd``."""
    try:
        sock = socket.socket(fileno=control_fd)
    except OSError as exc:
        raise HolderError(f"no control socket on fd {control_fd}: {exc.strerror}") from None
    try:
        data, fds, flags, _ = socket.recv_fds(sock, 256, 4)
    except OSError as exc:
        raise HolderError(f"cannot read the control message: {exc.strerror}") from None
    finally:
        sock.detach()  # fd 0: replaced by /dev/null, not closed here
    if data != MAGIC or len(fds) != 2 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise HolderError("not an sdexec terminal holder control message")
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds[0], fds[1]


class Client:
    """One connection of the server's (an attach stream)."""

    __slots__ = ("closing", "mode", "out", "out_size", "resync", "sock", "writer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.mode = ""  # "" until its hello; "attach", "text"
        self.writer = False
        self.out: collections.deque[bytes] = collections.deque()
        self.out_size = 0
        self.resync = False  # fell behind: a redraw is owed once it catches up
        self.closing = False  # close once everything queued is sent

    def queue(self, packets: list[bytes]) -> None:
        for p in packets:
            self.out.append(p)
            self.out_size += len(p)


class Holder:
    """The holder's state and its poll loop (see the module docstring)."""

    def __init__(self, master: int, listener: socket.socket, linger: bool) -> None:
        self.master = master
        self.listener = listener
        self.linger = linger
        self.clients: dict[int, Client] = {}
        self.typed = bytearray()  # input waiting for the master
        self.unparsed = bytearray()  # output read, not yet applied to the screen model
        self.closed = False  # EIO: the terminal is gone
        self.closed_at = 0.0
        try:
            raw = fcntl.ioctl(master, termios.TIOCGWINSZ, bytes(8))
            rows, cols = struct.unpack("HHHH", raw)[:2]
        except OSError:
            rows, cols = 24, 80
        self.screen = Screen(cols or 80, rows or 24)
        os.set_blocking(master, False)
        self._poller = select.poll()
        self._registered: dict[int, int] = {}

    # --- the loop ---------------------------------------------------------------------

    def _want(self, fd: int, mask: int) -> None:
        if self._registered.get(fd) != mask:
            if mask:
                self._poller.register(fd, mask)
                self._registered[fd] = mask
            elif fd in self._registered:
                self._poller.unregister(fd)
                del self._registered[fd]

    def run(self) -> None:
        listen_fd = self.listener.fileno()
        self._want(listen_fd, select.POLLIN)
        while True:
            self._prepare()
            if self.closed and self._done(time.monotonic()):
                return
            timeout = 0 if self.unparsed else 1000 if self.closed else None
            for fd, ev in self._poller.poll(timeout):
                if fd == self.master:
                    if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        self._read_master()
                    if ev & select.POLLOUT and not self.closed:
                        self._write_master()
                elif fd == listen_fd:
                    self._accept()
                elif fd in self.clients:
                    c = self.clients[fd]
                    if ev & select.POLLOUT:
                        self._send(fd, c)
                    if fd in self.clients and ev & (
                        select.POLLIN | select.POLLHUP | select.POLLERR
                    ):
                        self._receive(fd, c)
            if self.unparsed:
                deadline = time.monotonic() + PARSE_SLICE
                self._apply()
                while self.unparsed and time.monotonic() < deadline:
                    self._apply()

    def _prepare(self) -> None:
        """What to poll for next (and what is finished with)."""
        if self.master >= 0:
            if self.closed:
                self._want(self.master, 0)
                os.close(self.master)
                self.master = -1
            else:
                self._want(self.master, select.POLLIN | (select.POLLOUT if self.typed else 0))
        for fd, c in list(self.clients.items()):
            if c.closing and not c.out:
                self._drop(fd)
                continue
            mask = 0
            if not c.closing and len(self.typed) < INPUT_LIMIT:
                mask |= select.POLLIN
            if c.out or (c.resync and c.mode == "attach"):
                mask |= select.POLLOUT
            self._want(fd, mask or select.POLLHUP)

    def _done(self, now: float) -> bool:
        """The terminal is closed: whether the holder may go now."""
        if self.linger:
            return False
        if not any(c.out for c in self.clients.values()):
            return True
        return now - self.closed_at > DRAIN_GRACE

    # --- the terminal -----------------------------------------------------------------

    def _read_master(self) -> None:
        """Read what the master has (a pty gives at most a few KiB a read)."""
        for _ in range(READS_PER_TURN):
            try:
                data = os.read(self.master, PACKET_MAX - 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""  # EIO: every process has let go of the terminal
            if not data:
                self._terminal_closed()
                return
            self._output(data)

    def _output(self, data: bytes) -> None:
        self.unparsed += data
        packet = b"o" + data
        for c in self.clients.values():
            if c.mode != "attach" or c.resync or c.closing:
                continue
            c.out.append(packet)
            c.out_size += len(packet)
            if c.out_size > CLIENT_LIMIT:
                c.out.clear()
                c.out_size = 0
                c.resync = True

    def _apply(self, step: int = PARSE_STEP) -> None:
        """Apply up to ``step`` bytes of the output read to the model.

        The master is read as fast as it delivers (the program never waits
        for the model); when the model falls FLOOD_LIMIT behind, it skips to
        the last SKIP_TAIL bytes, cut at a line end (:meth:`Screen.skip`).
        """
        unparsed = self.unparsed
        if len(unparsed) > FLOOD_LIMIT:
            self._skip_to(SKIP_TAIL)
        data = bytes(unparsed[:step])
        del unparsed[:step]
        screen = self.screen
        screen.feed(data)
        if screen.replies:
            replies, screen.replies = screen.replies, []
            if not any(c.writer for c in self.clients.values()):
                for reply in replies:
                    self.typed += reply

    def _skip_to(self, tail: int) -> None:
        """Skip the output waiting for the model but about its last ``tail`` bytes.

        The cut goes after a line end, else after a carriage return, else
        before an escape sequence, in the first half of the tail; else
        anywhere: the model is bounded whatever the output.
        """
        unparsed = self.unparsed
        start = len(unparsed) - tail
        end = start + tail // 2
        cut = start
        for mark, after in ((b"\n", 1), (b"\r", 1), (b"\x1b", 0)):
            found = unparsed.find(mark, start, end)
            if found >= 0:
                cut = found + after
                break
        self.screen.skip(bytes(unparsed[:cut]))
        del unparsed[:cut]

    def _caught_up(self) -> Screen:
        """The model with everything read so far applied (to draw or show it)."""
        if len(self.unparsed) > SKIP_TAIL:
            self._skip_to(SKIP_TAIL)
        while self.unparsed:
            self._apply()
        return self.screen

    def _write_master(self) -> None:
        try:
            n = os.write(self.master, self.typed[:4096])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.typed.clear()
            return
        del self.typed[:n]

    def _terminal_closed(self) -> None:
        self.closed = True
        self.closed_at = time.monotonic()
        self.typed.clear()
        for c in self.clients.values():
            if c.mode == "attach" and not c.closing:
                self._end(c)

    def _end(self, c: Client) -> None:
        if c.resync:
            c.resync = False
            c.queue(split_packets(b"o", self._caught_up().render()))
        c.queue([b"e"])
        c.closing = True

    def _resize(self, text: str) -> None:
        size = parse_winsize(text)
        if size is None or self.closed:
            return
        cols, rows = size
        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError:
            return
        self.screen.resize(cols, rows)

    def _eof(self) -> None:
        try:
            veof = termios.tcgetattr(self.master)[6][termios.VEOF]
        except (OSError, termios.error):
            veof = b"\x04"
        self.typed += veof if isinstance(veof, bytes) else bytes([veof])

    # --- clients ----------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            _say(f"accept: {exc.strerror}")
            return
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            uid = struct.unpack("3i", creds)[1]
        except OSError:
            uid = -1
        if uid not in (0, os.geteuid()):
            _say(f"refused a client of uid {uid}")
            sock.close()
            return
        sock.setblocking(False)
        self.clients[sock.fileno()] = Client(sock)

    def _drop(self, fd: int) -> None:
        c = self.clients.pop(fd)
        self._want(fd, 0)
        c.sock.close()

    def _send(self, fd: int, c: Client) -> None:
        if not c.out and c.resync:
            c.resync = False
            c.queue(split_packets(b"o", self._caught_up().render()))
        while c.out:
            packet = c.out[0]
            try:
                c.sock.send(packet)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(fd)
                return
            c.out.popleft()
            c.out_size -= len(packet)

    def _receive(self, fd: int, c: Client) -> None:
        try:
            packet = c.sock.recv(PACKET_MAX)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            packet = b""
        if not packet:
            self._drop(fd)
            return
        kind, body = packet[:1], packet[1:]
        if kind == b"h" and not c.mode:
            self._hello(c, body)
        elif c.closing or self.closed or not c.mode:
            return
        elif kind == b"i":
            self.typed += body
        elif kind == b"w":
            self._resize(body.decode("ascii", "replace"))
        elif kind == b"d":
            self._eof()

    def _hello(self, c: Client, body: bytes) -> None:
        try:
            hello = json.loads(body)
        except ValueError:
            hello = None
        mode = hello.get("mode") if isinstance(hello, dict) else None
        if mode == "release":
            self.linger = False
            c.closing = True
        elif mode == "text":
            c.mode = "text"
            c.queue(split_packets(b"t", self._caught_up().text().encode("utf-8", "replace")))
            c.closing = True
        elif mode == "attach":
            assert isinstance(hello, dict)
            c.mode = "attach"
            c.writer = hello.get("writer") is True
            size = hello.get("winsize")
            if c.writer and isinstance(size, list) and len(size) == 2:
                self._resize(f"{size[0]}x{size[1]}")
            c.queue(split_packets(b"o", self._caught_up().render()))
            if self.closed:
                self._end(c)
        else:
            _say("a client's first packet is not a hello")
            c.closing = True


def _say(message: str) -> None:
    try:  # noqa: SIM105 - contextlib is one import too many
        os.write(2, f"sdexec terminal holder: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _on_term(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    """``pty_holder.py [--linger] SOCKET``: hold the terminal until it is closed."""
    args = argv[1:]
    linger = bool(args) and args[0] == "--linger"
    if linger:
        args = args[1:]
    if len(args) != 1:
        _say("usage: pty_holder.py [--linger] SOCKET")
        return 2
    path = args[0]
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        try:
            master, listen_fd = receive(0)
        except HolderError as exc:
            _say(str(exc))
            return 1
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        listener = socket.socket(fileno=listen_fd)
        listener.setblocking(False)
        Holder(master, listener, linger).run()
    finally:
        try:  # noqa: SIM105
            os.unlink(path)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
