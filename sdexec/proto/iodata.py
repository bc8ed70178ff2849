"""The data of an RFC 24 io object, read from a parsed payload: the one decoder.

An io object carries its bytes in ``data``: as the JSON string itself when
``encoding`` is absent or UTF-8 (``UTF-8``/``UTF8`` in any case), or as
base64 when ``encoding`` is ``base64``.  The server reads RFC 42 ``write``
requests with it (:func:`sdexec.proto.rfc42.parse_write`) and the clients
read ``output`` responses (:mod:`sdexec.client.exec`), so both ends accept
exactly the same objects.  The byte-level fast paths for the common layouts
are in :mod:`sdexec.proto.jsonio`; this is what they fall back to.

A lone surrogate in the text (JSON can spell ``"\\ud800"``) stands for no
UTF-8 bytes and is EPROTO, as is a wrongly typed field, invalid base64, or
an unknown encoding.

On the CLI's start-up path: it imports the error type and
:mod:`sdexec.proto.b64` only.
"""

from __future__ import annotations

from sdexec.base.errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def decode_io_data(io: Mapping[str, Any]) -> bytes:
    """The bytes of an RFC 24 io object (empty when it carries none)."""
    data = io.get("data")
    if data is None:
        return b""
    if not isinstance(data, str):
        raise ProtocolError("io: 'data' has the wrong type")
    encoding = io.get("encoding")
    if encoding is not None and not isinstance(encoding, str):
        raise ProtocolError("io: 'encoding' has the wrong type")
    if encoding is None or encoding.upper() in ("UTF-8", "UTF8"):
        try:
            return data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800"
            raise ProtocolError("io.data is not valid UTF-8") from exc
    if encoding == "base64":
        from sdexec.proto import b64  # not on the CLI's start-up path

        try:
            return b64.decode(data)
        except ValueError as exc:
            raise ProtocolError("io.data is not valid base64") from exc
    raise ProtocolError(f"unknown io encoding {encoding}")
