"""The caller's terminal, for a remote pty: raw mode and its window size.

Theory of operation
-------------------
With a remote pseudo-terminal (:mod:`sdexec.proto.pty`) the remote line
discipline does the echo, line editing and signal keys, so the local
terminal must pass every key through untouched and show the output as it
comes: *raw mode* (no echo, no ICANON, no ISIG, no IXON, no output
processing), as ``ssh -t`` and ``systemd-run --pty`` set it.

:class:`RawTerminal` saves the modes once and puts them back on every way
out: :meth:`restore` is idempotent, the CLI calls it from ``finally`` (a
lost connection, an error, the end of the command), and SIGTERM and SIGHUP
are caught by the exec loop and end it through the same ``finally``.  After
SIGCONT (the client was stopped and continued, and a shell may have reset
the terminal meanwhile) :meth:`enter` makes it raw again.

Attached to a background terminal, the local terminal shows a screen that
a remote program drew, in the modes it set (application cursor keys,
bracketed paste, mouse reporting, the alternate screen...).  Leaving it
without its program's help (detached, taken over), :func:`leave_sequence`
puts those back to their defaults; :class:`AltScreen` follows whether the
remote program is in the alternate screen, to leave that too.  The
*detach key* (:func:`parse_detach_key`) is a control key, ``^]`` unless
said otherwise, as telnet's escape.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import termios
import tty
from typing import Any

from sdexec.base.errors import SdexecError
from sdexec.proto.pty import DEFAULT_WINSIZE

DEFAULT_DETACH_KEY = "^]"
#: Modes a remote program may have left set, back to their defaults: the
#: rendition, the scroll region (cursor kept), cursor and keypad keys,
#: bracketed paste, mouse and focus reporting, insert mode, autowrap, a
#: visible cursor, the ASCII character sets.
LEAVE_MODES = (
    "\x1b[0m\x1b7\x1b[r\x1b8\x1b[?1l\x1b>\x1b[?2004l\x1b[?1000l\x1b[?1002l\x1b[?1003l"
    "\x1b[?1005l\x1b[?1006l\x1b[?1015l\x1b[?1004l\x1b[4l\x1b[?7h\x1b[?25h\x1b(B\x1b)B\x0f"
)
_ALT = re.compile(rb"\x1b\[\?(1049|1047|47)([hl])")


def parse_detach_key(text: str) -> bytes | None:
    """The byte of a detach key written ``^X`` (``^]``, ``^A``, ``^\\``...), None for ``none``."""
    if text.strip().lower() == "none":
        return None
    if len(text) == 2 and text[0] == "^":
        c = text[1].upper()
        if c == "?":
            return b"\x7f"
        if "@" <= c <= "_":
            return bytes([ord(c) ^ 0x40])
    raise SdexecError(
        errno.EINVAL, f"invalid detach key {text!r} (a control key such as ^] or ^A, or none)"
    )


class AltScreen:
    """Whether a stream of terminal output has left its reader in the alternate screen."""

    __slots__ = ("_tail", "mode")

    def __init__(self) -> None:
        self.mode = ""  # "1049", "1047" or "47" while in it
        self._tail = b""

    def feed(self, data: bytes) -> None:
        text = self._tail + data
        for m in _ALT.finditer(text):
            self.mode = m.group(1).decode() if m.group(2) == b"h" else ""
        self._tail = text[-12:]


def leave_sequence(alt: AltScreen | None = None, *, newline: bool = True) -> bytes:
    """What gives the local terminal back its default modes, its main screen (and a new line)."""
    out = f"\x1b[?{alt.mode}l" if alt is not None and alt.mode else ""
    return (out + LEAVE_MODES + ("\r\n" if newline else "")).encode()


def window_size(fd: int) -> tuple[int, int]:
    """``(cols, rows)`` of the terminal on ``fd``; else $COLUMNS/$LINES, else 80x24."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        pass
    else:
        if size.columns > 0 and size.lines > 0:
            return size.columns, size.lines
    try:
        cols, rows = int(os.environ["COLUMNS"]), int(os.environ["LINES"])
    except (KeyError, ValueError):
        return DEFAULT_WINSIZE
    return (cols, rows) if cols > 0 and rows > 0 else DEFAULT_WINSIZE


class RawTerminal:
    """The terminal on ``fd`` in raw mode until :meth:`restore`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = termios.tcgetattr(fd)
        self.enter()

    def enter(self) -> None:
        """Raw mode, now (again after SIGCONT)."""
        if self._saved is not None:
            tty.setraw(self.fd, termios.TCSADRAIN)

    def restore(self) -> None:
        """The modes as they were; a no-op the second time, or if the terminal is gone."""
        saved, self._saved = self._saved, None
        if saved is not None:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def __enter__(self) -> RawTerminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
