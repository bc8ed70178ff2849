"""Pieces of RFC 6 RPC shared by the asyncio and the blocking client.

A response either succeeds, with a JSON object payload (or none, read as
``{}``), or fails with an errnum and an optional NUL-terminated error text
(RFC 6 "Response Messages").  A failure becomes :class:`RemoteError`, so a
caller can tell "the server said no" from "the connection broke"
(ECONNRESET, :func:`lost_error`).  No I/O here.
"""

from __future__ import annotations

import errno

from sdexec.base.errors import SdexecError
from sdexec.proto.jsonio import parse_output

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sdexec.proto.message import Message

MATCHTAG_MAX = 0xFFFFFFFF


class RemoteError(SdexecError):
    """An error response: the server's errnum and its text (or strerror)."""


def lost_error() -> SdexecError:
    """The error every pending call gets when the connection goes away."""
    return SdexecError(errno.ECONNRESET, "connection to server lost")


def response_payload(msg: Message) -> dict[str, Any]:
    """A response's JSON payload ({} if empty), or its error as :class:`RemoteError`."""
    if msg.errnum:
        raise RemoteError(msg.errnum, msg.error_text())
    raw = msg.payload
    if not raw or raw == b"\0":
        return {}
    if raw.startswith(b'{"type":"output"'):  # output's hot path; None: not our layout
        fast = parse_output(raw)
        if fast is not None:
            return fast
    payload: dict[str, Any] = msg.json()
    return payload
