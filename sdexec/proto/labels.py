"""What a process label may be (RFC 42 ``cmd.label``), checked once for every use.

A label names a background process for ``ps``, ``kill``, ``wait``, ``attach``
and ``logs``, and it travels further than sdexec: it is the journal's
``SYSLOG_IDENTIFIER`` of the process's output (journald drops every line of
a stream whose identifier is 255 bytes or longer, and ``systemd-cat`` fails
at 256), it is typed in shells (``journalctl -t LABEL``), printed in ``ps``
columns, and a part of it goes into the unit's name.  So a label is:

* 1 to :data:`LABEL_MAX` bytes of UTF-8;
* printable characters without white space (no newline, tab or control
  character, which would break the journal's identifier, a table, or a line
  of a log);
* not digits only: the CLI reads an argument of digits as a pid, so such a
  label could never be named.

Pure: no I/O.  The server refuses a bad label with EINVAL and this text; the
CLI checks it first with the same function.
"""

from __future__ import annotations

#: Longest label, in bytes of UTF-8 (journald's identifier limit is 254).
LABEL_MAX = 128


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a label, or None when it can."""
    if not label:
        return "a label must not be empty"
    try:
        size = len(label.encode("utf-8"))
    except UnicodeEncodeError:
        return "a label must be valid UTF-8"
    if size > LABEL_MAX:
        return f"a label may be at most {LABEL_MAX} bytes long, not {size}"
    for ch in label:
        if ch.isspace() or not ch.isprintable():
            return f"a label must not contain white space or control characters ({ch!r})"
    if label.isascii() and label.isdigit():
        return "a label must not be digits only (that is a pid)"
    return None
