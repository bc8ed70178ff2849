"""RFC 38 "Flux Security Key Value Encoding": typed key-value pairs as bytes.

Theory of operation
-------------------
Each pair is ``KEY \\0 TYPE VALUE \\0`` and pairs are simply concatenated
(RFC 38 "Implementation").  TYPE is one character:

=====  ==========  ====================================================
``s``  string      the UTF-8 text itself
``i``  int64       decimal, as ``printf("%" PRIi64)``
``d``  double      ``printf("%.6f")`` (so ``inf``, ``-inf``, ``nan``)
``b``  boolean     ``true`` or ``false``
``t``  timestamp   ISO 8601 UTC, ``YYYY-MM-DDTHH:MM:SSZ``
=====  ==========  ====================================================

There are no implicit conversions: a value encoded as an integer decodes as
an :class:`int` and nothing else, a timestamp as :class:`Timestamp`.  Keys
are non-empty; neither keys nor string values may contain NUL.  Decoding is
strict (a trailing partial pair, an unknown type, a malformed number or a
duplicate key is an error) and bounded by :data:`MAX_ENCODED` bytes, the
implementation-defined limit RFC 38 asks for.  Errors are
``SdexecError(EINVAL)``.  Pure functions, no I/O: this module is used by the
CLI, so it imports nothing heavy.
"""

from __future__ import annotations

import errno
import time

from sdexec.base.errors import SdexecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

#: The largest encoded object accepted or produced (RFC 38 asks for a limit).
MAX_ENCODED = 64 * 1024

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class Timestamp(int):
    """Seconds since the epoch, encoded as an RFC 38 ``t`` (ISO 8601) value."""

    def iso(self) -> str:
        return time.strftime(_TS_FORMAT, time.gmtime(int(self)))

    def __repr__(self) -> str:
        return f"Timestamp({int(self)})"


def _bad(message: str) -> SdexecError:
    return SdexecError(errno.EINVAL, message)


def _encode_value(key: str, value: object) -> tuple[str, str]:
    # Order matters: bool and Timestamp are subclasses of int.
    if isinstance(value, bool):
        return "b", "true" if value else "false"
    if isinstance(value, Timestamp):
        return "t", value.iso()
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise _bad(f"kv: {key}: integer out of int64 range")
        return "i", str(value)
    if isinstance(value, float):
        return "d", format(value, ".6f")
    if isinstance(value, str):
        if "\0" in value:
            raise _bad(f"kv: {key}: a string value must not contain NUL")
        return "s", value
    raise _bad(f"kv: {key}: unsupported value type {type(value).__name__}")


def encode(pairs: Mapping[str, object] | Iterable[tuple[str, object]]) -> bytes:
    """Encode pairs (a mapping, or (key, value) pairs in order) per RFC 38."""
    items = pairs.items() if hasattr(pairs, "items") else pairs
    out: list[bytes] = []
    size = 0
    for key, value in items:
        if not isinstance(key, str) or not key:
            raise _bad("kv: keys must be non-empty strings")
        if "\0" in key:
            raise _bad("kv: a key must not contain NUL")
        typ, text = _encode_value(key, value)
        chunk = key.encode() + b"\0" + typ.encode() + text.encode() + b"\0"
        size += len(chunk)
        if size > MAX_ENCODED:
            raise _bad(f"kv: encoded object exceeds {MAX_ENCODED} bytes")
        out.append(chunk)
    return b"".join(out)


def _decode_int(key: str, text: str) -> int:
    body = text[1:] if text[:1] == "-" else text
    if not body or not body.isascii() or not body.isdigit():
        raise _bad(f"kv: {key}: malformed integer")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _bad(f"kv: {key}: integer out of int64 range")
    return value


def _decode_double(key: str, text: str) -> float:
    if not text or not text.isascii() or text.strip() != text or "_" in text:
        raise _bad(f"kv: {key}: malformed double")
    try:
        return float(text)
    except ValueError:
        raise _bad(f"kv: {key}: malformed double") from None


def _decode_timestamp(key: str, text: str) -> Timestamp:
    import calendar

    try:
        parsed = time.strptime(text, _TS_FORMAT)
    except ValueError:
        raise _bad(f"kv: {key}: malformed timestamp") from None
    return Timestamp(calendar.timegm(parsed))


def _decode_value(key: str, typ: str, text: str) -> object:
    if typ == "s":
        return text
    if typ == "i":
        return _decode_int(key, text)
    if typ == "d":
        return _decode_double(key, text)
    if typ == "b":
        if text == "true":
            return True
        if text == "false":
            return False
        raise _bad(f"kv: {key}: malformed boolean")
    if typ == "t":
        return _decode_timestamp(key, text)
    raise _bad(f"kv: {key}: unknown type {typ!r}")


def decode(data: bytes) -> dict[str, object]:
    """Decode an RFC 38 object; EINVAL for anything malformed."""
    if len(data) > MAX_ENCODED:
        raise _bad(f"kv: encoded object exceeds {MAX_ENCODED} bytes")
    if data and not data.endswith(b"\0"):
        raise _bad("kv: truncated object")
    fields = data.split(b"\0")[:-1] if data else []
    if len(fields) % 2:
        raise _bad("kv: a key has no value")
    out: dict[str, object] = {}
    for i in range(0, len(fields), 2):
        try:
            key = fields[i].decode()
            raw = fields[i + 1].decode()
        except UnicodeDecodeError:
            raise _bad("kv: not UTF-8") from None
        if not key:
            raise _bad("kv: empty key")
        if not raw:
            raise _bad(f"kv: {key}: no type")
        if key in out:
            raise _bad(f"kv: {key}: duplicate key")
        out[key] = _decode_value(key, raw[0], raw[1:])
    return out
