"""One error family for the whole project: an errno-carrying OSError.

Every layer raises :class:`SdexecError` (or lets a plain ``OSError`` through);
only the router turns one into an RFC 6 error response, and only the CLI turns
one into an exit code.  Foreign errors (D-Bus names, socket errors) are
translated once, at the boundary that meets them.
"""

from __future__ import annotations

import errno
import os


class SdexecError(OSError):
    """An error with an errno and a short human-readable message."""

    def __init__(self, errnum: int, message: str | None = None) -> None:
        text = message if message else os.strerror(errnum)
        super().__init__(errnum, text)

    @property
    def message(self) -> str:
        return str(self.strerror)


class ProtocolError(SdexecError):
    """Malformed input on the wire (EPROTO)."""

    def __init__(self, message: str = "Protocol error") -> None:
        super().__init__(errno.EPROTO, message)


def errnum_of(exc: BaseException) -> int:
    """The errno an exception stands for (EINVAL/EIO fallbacks for foreign errors)."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return errno.EINVAL
    return errno.EIO


def message_of(exc: BaseException) -> str:
    """A one-line message for an exception, without the ``[Errno N]`` noise."""
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    text = str(exc)
    return text if text else os.strerror(errnum_of(exc))
