"""Non-ASCII text to systemd with the dbus-fast of Debian 12 (1.84).

A D-Bus string travels as its length in bytes, the UTF-8 bytes and a NUL.
dbus-fast 1.84 (Debian 12's ``python3-dbus-fast``) writes ``len()`` of the
Python string, its count of characters, instead of its count of bytes: any
non-ASCII character in an argument, an environment value or a description
makes a malformed message, and dbus-daemon drops the whole connection (every
call in flight fails; the server reconnects).  A Flux prolog's environment
has one in every job (``FLUX_JOB_ID=ƒ...``).

That marshaller takes the length from ``len(value)`` and the bytes from
``value.encode()``, so a ``str`` whose ``len()`` is its UTF-8 length is
written right by it, and by any later dbus-fast, which counts the encoded
bytes itself.  :func:`sendable` gives non-ASCII strings in a message body
that form, only where a probe of the installed marshaller, made once, shows
it is needed.
"""

from __future__ import annotations

import functools
from typing import Any

from dbus_fast import Message, Variant


class Utf8Sized(str):
    """A string whose ``len()`` is the length of its UTF-8 encoding."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.encode())


@functools.cache
def marshaller_counts_characters() -> bool:
    """Whether the installed dbus-fast writes a string's length in characters."""
    probe = Message(path="/", interface="a.b", member="C", signature="s", body=["\u0192"])
    try:
        data = bytes(probe._marshall(False))
    except Exception:  # a private API: if it changed, so did the marshaller
        return False
    # The body ends the message: uint32 length, the 2 bytes of U+0192, NUL.
    length = int.from_bytes(data[-7:-3], "little" if data[:1] == b"l" else "big")
    return length == 1


def _fix(value: Any) -> Any:
    if isinstance(value, str):
        return value if value.isascii() else Utf8Sized(value)
    if isinstance(value, list):
        return [_fix(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_fix(v) for v in value)
    if isinstance(value, dict):
        return {_fix(k): _fix(v) for k, v in value.items()}
    if isinstance(value, Variant):
        return Variant(value.signature, _fix(value.value))
    return value


def sendable(body: list[Any]) -> list[Any]:
    """``body``, safe to marshal with the installed dbus-fast."""
    if not marshaller_counts_characters():
        return body
    return [_fix(v) for v in body]


def fixed(body: list[Any]) -> list[Any]:
    """``body`` with every non-ASCII string sized in bytes (whatever the marshaller)."""
    return [_fix(v) for v in body]
