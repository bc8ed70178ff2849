"""The terminal extension of RFC 42: a pseudo-terminal for the process, sans-IO.

Theory of operation
-------------------
RFC 42 leaves ``cmd.opts`` to the implementation ("Options are
implementation dependent") and lets a server ignore ``write`` requests to
channel names it does not know.  The extension uses exactly those two
openings, so that every message stays a valid RFC 42 message:

* **Asking for a terminal.**  The option ``SDEXEC_PTY`` in ``cmd.opts``,
  whose value is the initial window size ``COLSxROWS`` (``"80x24"``, as in
  an X geometry).  The server runs the command with a new pseudo-terminal
  as its standard input, output and error, as its controlling terminal,
  with the command as session leader.
* **Terminal output** is the ``stdout`` stream: ordinary ``output``
  responses, UTF-8 or base64 as usual.  Everything the program writes to
  the terminal (its stdout and stderr, and the echo of what was typed)
  comes there, in order, exactly as a terminal shows it (``\\r\\n`` line
  ends, escape sequences).  A forwarded ``stderr`` stream gets only its
  EOF.  So a client that does not know the extension (a plain RFC 42
  ``attach``, ``flux`` tools, a log reader) still gets the whole output,
  correctly, as text.
* **Typed input** is ``write`` to ``stdin``, with credit as usual; it goes
  to the terminal's input, so control characters do what a terminal does
  (Ctrl-C interrupts the foreground process group, Ctrl-Z suspends it,
  Ctrl-\\ quits it).  EOF on ``stdin`` sends the terminal's EOF character
  (Ctrl-D): a terminal cannot be half-closed.
* **Window size** travels as a ``write`` to the pseudo-channel
  ``pty.winsize`` whose data is ``COLSxROWS``; it takes no credit.  The
  name is not an environment variable name, so it can never be a real
  channel; a server without the extension ignores it, as RFC 42 allows.
  The change reaches the program as SIGWINCH, in order with the input
  around it.
* ``attached`` responses and ``list`` entries of such a process carry
  ``"pty": true`` (an extra key, which RFC 42 clients ignore), so a client
  knows to give it a raw terminal.

This module only names and parses these; it does no I/O.
"""

from __future__ import annotations

import errno

from sdexec.base.errors import SdexecError

PTY_OPTION = "SDEXEC_PTY"
WINSIZE_STREAM = "pty.winsize"
DEFAULT_WINSIZE = (80, 24)
MAX_DIMENSION = 9999  # columns or rows; far beyond any screen, well inside a u16


def parse_winsize(text: str) -> tuple[int, int]:
    """``(cols, rows)`` from ``COLSxROWS``; EINVAL for anything else."""
    cols_text, sep, rows_text = text.strip().lower().partition("x")
    if sep and (cols_text + rows_text).isascii() and cols_text.isdigit() and rows_text.isdigit():
        cols, rows = int(cols_text), int(rows_text)
        if 0 < cols <= MAX_DIMENSION and 0 < rows <= MAX_DIMENSION:
            return cols, rows
    raise SdexecError(
        errno.EINVAL, f"invalid window size {text[:40]!r} (expected COLSxROWS, e.g. 80x24)"
    )


def format_winsize(cols: int, rows: int) -> str:
    """The wire form of a window size: ``COLSxROWS``."""
    return f"{cols}x{rows}"
