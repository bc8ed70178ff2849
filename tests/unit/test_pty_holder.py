"""The terminal holder program (sdexec/unit/pty_holder.py), run as the server runs it.

No systemd is needed: the test opens the pty pair, plays the program on the
slave end (writing its output, reading what is typed), passes the master
and a listening socket to ``python -I -S pty_holder.py`` exactly as the
server does (sdexec.server.pty.holder_unit's control message), and plays
the server on the holder's socket.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdexec.server.pty import HOLDER_PATH, holder_listener, set_winsize
from sdexec.unit import pty_holder
from sdexec.unit.pty_screen import Screen

DEADLINE = 30.0


@dataclass
class Setup:
    proc: subprocess.Popen[bytes]
    slave: int
    path: Path

    def write(self, data: bytes) -> None:
        os.write(self.slave, data)

    def typed(self, n: int) -> bytes:
        """``n`` bytes typed into the terminal, as the program reads them."""
        out = b""
        deadline = time.monotonic() + DEADLINE
        while len(out) < n:
            assert time.monotonic() < deadline, out
            r, _, _ = select.select([self.slave], [], [], 0.1)
            if r:
                out += os.read(self.slave, n - len(out))
        return out

    def close_slave(self) -> None:
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1


def start_holder(tmp_path: Path, *args: str) -> Setup:
    master, slave = os.openpty()
    tty.setraw(slave)  # the "program" sees typed bytes as they are
    set_winsize(master, 40, 10)
    path = tmp_path / "holder.sock"
    listener = holder_listener(str(path))
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socket.send_fds(mine, [pty_holder.MAGIC], [master, listener.fileno()])
    mine.close()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", HOLDER_PATH, *args, str(path)],
        stdin=theirs,
        stderr=subprocess.PIPE,
    )
    theirs.close()
    listener.close()
    os.close(master)
    return Setup(proc, slave, path)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Setup]:
    h = start_holder(tmp_path)
    try:
        yield h
    finally:
        h.close_slave()
        if h.proc.poll() is None:
            h.proc.kill()
        h.proc.wait()
        assert h.proc.stderr is not None
        h.proc.stderr.close()


class Client:
    """The server's side of one attach stream."""

    def __init__(self, path: Path, hello: dict[str, object]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(str(path))
        self.sock.sendall(b"h" + json.dumps(hello).encode())
        self.screen = Screen(40, 10)
        self.received = 0
        self.ended = False

    def send(self, packet: bytes) -> None:
        self.sock.sendall(packet)

    def pump(self, until: object = None) -> None:
        """Read packets into the screen until ``until(self)`` holds (or the end)."""
        deadline = time.monotonic() + DEADLINE
        while not (until is not None and until(self)):  # type: ignore[operator]
            assert time.monotonic() < deadline, self.screen.text()
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            packet = self.sock.recv(1 << 17)
            if not packet:
                return
            if packet[:1] == b"o":
                self.screen.feed(packet[1:])
                self.received += len(packet) - 1
            elif packet[:1] == b"e":
                self.ended = True

    def text(self) -> str:
        return self.screen.text()

    def close(self) -> None:
        self.sock.close()


def shows(text: str) -> object:
    return lambda c: text in c.text()


def attach(path: Path, **hello: object) -> Client:
    return Client(path, {"mode": "attach", **hello})


def test_an_attach_gets_the_screen_then_the_output(holder: Setup) -> None:
    holder.write(b"\x1b[1;31mbefore\x1b[m\r\n" + b"".join(b"%d\r\n" % i for i in range(50)))
    time.sleep(0.2)
    c = attach(holder.path)
    c.pump(shows("49"))
    assert c.text().splitlines()[0] == "41"  # the last screenful of 10 rows
    assert "before" not in c.text()
    holder.write(b"after")
    c.pump(shows("after"))
    c.close()


def test_typed_input_eof_and_window_size_reach_the_terminal(holder: Setup) -> None:
    c = attach(holder.path, writer=True, winsize=[50, 12])
    c.pump(lambda c: c.received > 0)
    c.send(b"iabc")
    assert holder.typed(3) == b"abc"
    c.send(b"d")
    veof = termios.tcgetattr(holder.slave)[6][termios.VEOF]
    assert holder.typed(1) == veof
    rows, cols = struct.unpack("HHHH", fcntl.ioctl(holder.slave, termios.TIOCGWINSZ, bytes(8)))[:2]
    assert (cols, rows) == (50, 12)  # from the hello, before the screen was drawn
    c.send(b"w60x20")
    deadline = time.monotonic() + DEADLINE
    while struct.unpack("HHHH", fcntl.ioctl(holder.slave, termios.TIOCGWINSZ, bytes(8)))[:2] != (
        20,
        60,
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    c.close()


def test_a_reader_does_not_set_the_window_size(holder: Setup) -> None:
    c = attach(holder.path, writer=False, winsize=[70, 30])
    c.pump(lambda c: c.received > 0)
    rows, cols = struct.unpack("HHHH", fcntl.ioctl(holder.slave, termios.TIOCGWINSZ, bytes(8)))[:2]
    assert (cols, rows) == (40, 10)
    c.close()


def test_text_mode_gives_the_screen_as_text(holder: Setup) -> None:
    holder.write(b"\x1b[2;3Hhello\x1b[4;1Hworld")
    time.sleep(0.2)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(holder.path))
    sock.sendall(b'h{"mode": "text"}')
    sock.settimeout(DEADLINE)
    parts = []
    while packet := sock.recv(1 << 17):
        parts.append(packet)
    sock.close()
    assert b"".join(p[1:] for p in parts) == b"\n  hello\n\nworld\n"
    assert all(p[:1] == b"t" for p in parts)


def test_terminal_queries_are_answered_while_no_writer_is_attached(holder: Setup) -> None:
    holder.write(b"\x1b[3;7H\x1b[6n")
    assert holder.typed(6) == b"\x1b[3;7R"
    c = attach(holder.path, writer=True)
    c.pump(lambda c: c.received > 0)
    holder.write(b"\x1b[6n\x1b[5n")  # the writer's terminal answers now, not the holder
    c.pump(lambda c: c.received >= 0 and c.screen.replies != [])
    r, _, _ = select.select([holder.slave], [], [], 0.5)
    assert not r
    c.close()


def test_a_client_that_falls_behind_gets_a_redraw(holder: Setup) -> None:
    slow = attach(holder.path)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    total = 0
    line = b"x" * 70 + b"\r\n"
    for i in range(60000):  # ~4 MB: never blocks, whoever reads
        holder.write(b"%06d " % i + line)
        total += 7 + len(line)
    holder.write(b"\x1b[Hthe end")
    slow.pump(shows("the end"))
    assert slow.received < total / 2  # not every byte: a fresh screen instead
    assert "059999" in slow.text()
    slow.close()


def test_the_end_of_the_terminal_ends_the_holder(holder: Setup) -> None:
    c = attach(holder.path)
    holder.write(b"last words")
    c.pump(shows("last words"))
    holder.close_slave()  # every process let go of the terminal: EIO on the master
    c.pump()
    assert c.ended
    assert holder.proc.wait(DEADLINE) == 0
    assert not holder.path.exists()
    c.close()


def test_a_lingering_holder_keeps_the_last_screen_until_released(tmp_path: Path) -> None:
    h = start_holder(tmp_path, "--linger")
    try:
        h.write(b"final screen")
        h.close_slave()
        time.sleep(0.3)
        assert h.proc.poll() is None
        c = attach(h.path)
        c.pump()
        assert c.ended and "final screen" in c.text()
        c.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(str(h.path))
        sock.sendall(b'h{"mode": "release"}')
        assert h.proc.wait(DEADLINE) == 0
        sock.close()
        assert not h.path.exists()
    finally:
        if h.proc.poll() is None:
            h.proc.kill()
        h.proc.wait()


def test_sigterm_hangs_the_terminal_up(holder: Setup) -> None:
    c = attach(holder.path)
    c.pump(lambda c: c.received > 0)
    holder.proc.send_signal(signal.SIGTERM)
    assert holder.proc.wait(DEADLINE) == 0
    assert not holder.path.exists()
    with pytest.raises(OSError):  # EIO: the master is closed, the terminal hung up
        os.write(holder.slave, b"x")
    c.close()


def test_a_bad_hello_closes_that_connection_only(holder: Setup) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(holder.path))
    sock.sendall(b"h[1, 2]")
    sock.settimeout(DEADLINE)
    assert sock.recv(100) == b""
    sock.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(holder.path))
    sock.sendall(b"iinput before any hello")  # ignored
    sock.sendall(b'h{"mode": "attach"}')
    sock.settimeout(DEADLINE)
    assert sock.recv(1 << 17)[:1] == b"o"
    sock.close()
    r, _, _ = select.select([holder.slave], [], [], 0.3)
    assert not r
    assert holder.proc.poll() is None


def test_a_holder_without_its_control_message_says_so(tmp_path: Path) -> None:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.sendall(b"something else")
    r = subprocess.run(
        [sys.executable, "-I", "-S", HOLDER_PATH, str(tmp_path / "x.sock")],
        stdin=theirs,
        capture_output=True,
        timeout=DEADLINE,
    )
    mine.close()
    theirs.close()
    assert r.returncode == 1
    assert b"not an sdexec terminal holder control message" in r.stderr


@pytest.mark.parametrize("line", [b"y\n", b"\r%d", b"\x1b[H%d\x1b[K"])
def test_a_flood_of_output_leaves_the_screen_it_ends_with(holder: Setup, line: bytes) -> None:
    """Lines without CR (the slave is raw: no ONLCR), CRs alone, cursor addressing."""
    chunk = b"".join(line % i if b"%d" in line else line for i in range(20000))
    for _ in range(25):  # several times the holder's flood limit, unread by anyone
        holder.write(chunk)
    holder.write(b"\x1b[2J\x1b[Hthe end\r\n")
    c = attach(holder.path)
    c.pump(shows("the end"))
    assert c.text() == "the end\n"
    c.close()
