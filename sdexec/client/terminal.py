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
"""

from __future__ import annotations

import contextlib
import os
import termios
import tty
from typing import Any

from sdexec.proto.pty import DEFAULT_WINSIZE


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
