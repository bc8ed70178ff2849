"""Compact JSON through CPython's C accelerator, without importing :mod:`json`.

``import json`` imports ``re`` and, through it, ``enum``, ``functools`` and
more: about 8 ms of every ``sdexec`` command's start-up, when all the work
is done by the accelerator module ``_json`` anyway.  This module drives
``_json`` directly, configured exactly as ``json.dumps(obj,
separators=(",", ":"), ensure_ascii=False)`` and ``json.loads`` configure
it, and so produces and accepts exactly what they do (the unit tests
compare the two on generated documents).  Where ``_json`` is missing or its
interface differs, it falls back to the :mod:`json` module.

Errors are those of :mod:`json`: :class:`ValueError` (``JSONDecodeError``,
imported by ``_json`` only when it has one to raise) for bad text,
:class:`UnicodeDecodeError` for bytes that are not UTF-8, :class:`TypeError`
for an object JSON cannot hold.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _not_serializable(obj: object) -> object:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


class _ScannerContext:
    """The attributes ``_json.make_scanner`` reads: those of ``json.JSONDecoder()``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict[str, str] = {}  # noqa: RUF012 (read once by make_scanner, which keeps its own)


def _c_codec() -> tuple[Callable[[Any], str], Callable[[str], Any]] | None:
    try:
        import _json

        encode_string = _json.encode_basestring
        make_encoder = _json.make_encoder
        scan = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]
    except (ImportError, AttributeError, TypeError):
        return None

    def dumps(obj: Any) -> str:
        if isinstance(obj, str):
            return str(encode_string(obj))
        # Arguments as json.JSONEncoder.iterencode passes them (indent=None).
        encoder = make_encoder(
            {}, _not_serializable, encode_string, None, ":", ",", False, False, True
        )
        return "".join(encoder(obj, 0))

    def loads(text: str) -> Any:
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            obj, end = scan(text, start)
        except StopIteration:
            raise ValueError(f"Expecting value: char {start}") from None
        if text[end:].strip(_WHITESPACE):
            raise ValueError(f"Extra data: char {end}")
        return obj

    try:  # the interface is private to CPython: check it does what json does
        if dumps({"a": [1, 2.5, None, True, "\u00e9\n"]}) != '{"a":[1,2.5,null,true,"\u00e9\\n"]}':
            return None
        if loads(' {"a": [1, 2.5, null, "\\u00e9"]} ') != {"a": [1, 2.5, None, "\u00e9"]}:
            return None
    except Exception:
        return None
    return dumps, loads


def _json_codec() -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    import json

    def dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

    return dumps, json.loads


_dumps, _loads = _c_codec() or _json_codec()


def dumps(obj: Any) -> str:
    """``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``."""
    return _dumps(obj)


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """``json.loads``, for UTF-8 bytes or a str."""
    text = data if isinstance(data, str) else str(data, "utf-8")
    return _loads(text)
