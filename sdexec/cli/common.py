"""What the CLI subcommands share: messages, targets, exit codes, connecting.

Error messages go to stderr as ``sdexec: ...``.  Exit codes follow the
convention of env(1), timeout(1) and podman-run(1): a command's own status
passes through, 126/127 mean it could not be executed / was not found, and
125 means sdexec itself failed.
"""

from __future__ import annotations

import errno
import os
import sys

from sdexec.client.blocking import BlockingHandle
from sdexec.client.exec import exec_error_exit_code as exec_error_exit_code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sdexec.cli.signing import SignOptions

PROG = "sdexec"
EXIT_FAILURE = 1
EXIT_SDEXEC_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130


def error(message: str) -> None:
    """Print ``sdexec: message`` to stderr."""
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def target_payload(arg: str) -> dict[str, Any]:
    """The RFC 42 process reference for a PID|LABEL argument.

    An argument of ASCII digits only is a pid; anything else is a label
    (with ``pid`` -1, which RFC 42 says the server ignores).
    """
    if arg.isascii() and arg.isdigit():
        return {"pid": int(arg)}
    return {"pid": -1, "label": arg}


def exec_error_message(command: str, errnum: int | None, text: str) -> str:
    """The server's text, prefixed with the command when it is only a strerror."""
    generic = os.strerror(errnum or errno.EIO)
    if not text or text == generic:
        return f"{command}: {generic}"
    return text


def connect(uri: str | None, sign: SignOptions | None = None) -> BlockingHandle:
    """A blocking connection to the server (see :mod:`sdexec.client.blocking`).

    With ``sign``, RFC 42 requests are signed as :mod:`sdexec.cli.signing` says.
    """
    handle = BlockingHandle.connect(uri)
    if sign is not None:
        from sdexec.cli import signing

        try:
            signing.apply(handle, sign)
        except BaseException:
            handle.close()
            raise
    return handle
