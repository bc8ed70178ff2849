"""The terminal extension: window sizes on the wire, and the server's pty ends (no systemd)."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios

import pytest

from sdexec.client.terminal import window_size
from sdexec.proto.pty import format_winsize, parse_winsize
from sdexec.server.pty import open_pty


@pytest.mark.parametrize(
    ("text", "size"), [("80x24", (80, 24)), (" 132X50 ", (132, 50)), ("1x1", (1, 1))]
)
def test_window_sizes_are_cols_x_rows(text: str, size: tuple[int, int]) -> None:
    assert parse_winsize(text) == size
    assert parse_winsize(format_winsize(*size)) == size


@pytest.mark.parametrize(
    "text",
    [
        "",
        "80",
        "x24",
        "80x",
        "0x24",
        "80x0",
        "-1x5",
        "80x24x1",
        "\u0668\u0660x24",
        "10000x24",
        "8 0x24",
    ],
)
def test_bad_window_sizes_are_einval(text: str) -> None:
    with pytest.raises(OSError) as info:
        parse_winsize(text)
    assert info.value.errno == errno.EINVAL


def _size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return cols, rows


def test_a_new_pty_has_the_requested_size_on_both_ends() -> None:
    term = open_pty(120, 40)
    try:
        assert term.path == os.ttyname(term.slave)
        assert _size(term.master) == _size(term.slave) == (120, 40)
        assert not os.get_inheritable(term.master)
        assert not os.get_inheritable(term.slave)
        assert window_size(term.slave) == (120, 40)
    finally:
        os.close(term.master)
        term.close_slave()


def test_reading_the_master_fails_with_eio_once_the_slave_is_closed() -> None:
    """What the server takes as the terminal's EOF, after the last output."""
    term = open_pty(80, 24)
    try:
        os.write(term.slave, b"last words\n")
        term.close_slave()
        assert os.read(term.master, 100) == b"last words\r\n"
        with pytest.raises(OSError) as info:
            os.read(term.master, 100)
        assert info.value.errno == errno.EIO
    finally:
        os.close(term.master)
