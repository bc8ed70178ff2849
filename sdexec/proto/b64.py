"""Base64 for io data (RFC 24 ``"encoding":"base64"``): output that is not UTF-8, and stdin.

CPython's ``binascii`` encodes about 330 MB/s and decodes about 170 MB/s
on these machines, which bounded binary output to 0.15x the raw pipe.
`pybase64 <https://pypi.org/project/pybase64/>`_ (SIMD, AVX2 here) does the
same in a small fraction of the time, so it is used when installed (the
``fast`` extra; ``scripts/bootstrap`` installs it) and ``binascii`` is the
fallback, e.g. for the Debian package, where pybase64 is not packaged.

Both backends give the same results: standard alphabet, padded, no
newline; decoding is strict (anything outside the alphabet, or misplaced
padding, raises :class:`ValueError`).  The backend is loaded on first use,
not at import: importing pybase64 costs ~5 ms, which the CLI's start-up
pays only when base64 data arrives.
"""

from __future__ import annotations

import binascii

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Buffer = bytes | bytearray | memoryview
    Codec = tuple[Callable[[Buffer], bytes], Callable[[Buffer | str], bytes], str]


def binascii_codec() -> Codec:
    """The standard library's codec."""

    def encode(data: Buffer) -> bytes:
        return binascii.b2a_base64(data, newline=False)

    def decode(data: Buffer | str) -> bytes:
        # strict_mode still takes a full quantum followed by "=" ("0000=").
        if len(data) % 4:
            raise binascii.Error("base64 length is not a multiple of 4")
        return binascii.a2b_base64(data, strict_mode=True)

    return encode, decode, "binascii"


def pybase64_codec() -> Codec | None:
    """pybase64's codec, or None when it is not installed."""
    try:
        import pybase64
    except ImportError:
        return None

    def decode(data: Buffer | str) -> bytes:
        return pybase64.b64decode(data, validate=True)

    return pybase64.b64encode, decode, "pybase64"


_codec: Codec | None = None


def _load() -> Codec:
    global _codec
    _codec = pybase64_codec() or binascii_codec()
    return _codec


def encode(data: Buffer) -> bytes:
    """``data`` in base64, as ASCII bytes."""
    return (_codec or _load())[0](data)


def decode(data: Buffer | str) -> bytes:
    """The bytes that base64 ``data`` stands for; :class:`ValueError` if it is not base64."""
    return (_codec or _load())[1](data)


def backend() -> str:
    """The name of the codec in use: ``pybase64`` or ``binascii``."""
    return (_codec or _load())[2]
