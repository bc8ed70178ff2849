"""Reading an RFC 42 response stream with the blocking client (attach, logs).

Both ``sdexec attach`` and ``sdexec logs`` send one streaming request and
then print ``output`` responses to the matching local stream until ENODATA.
This module holds that loop; the commands differ only in what they ask for
and what they do with ``finished`` and ``stopped``.
"""

from __future__ import annotations

import errno
import json
import sys

from sdexec.base.errors import SdexecError
from sdexec.client.blocking import BlockingHandle, _write_all
from sdexec.client.rpc import response_payload
from sdexec.proto.iodata import decode_io_data

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def pump(
    handle: BlockingHandle,
    topic: str,
    payload: dict[str, Any],
    on_other: Callable[[dict[str, Any]], None] | None = None,
    as_json: bool = False,
) -> None:
    """Print a stream's output until it ends; raises the stream's error, if any."""
    follow(handle, handle.request(topic, payload, streaming=True), on_other, as_json)


def first_response(handle: BlockingHandle, tag: int) -> dict[str, Any]:
    """The first response of stream ``tag`` (raises its error; EPROTO if it just ends)."""
    while True:
        for i, msg in enumerate(messages := handle.receive()):
            if msg.matchtag != tag:
                continue
            handle.requeue(messages[i + 1 :])
            if msg.errnum == errno.ENODATA:
                raise SdexecError(errno.EPROTO, "the stream ended at once")
            return response_payload(msg)


def follow(
    handle: BlockingHandle,
    tag: int,
    on_other: Callable[[dict[str, Any]], None] | None = None,
    as_json: bool = False,
) -> None:
    """:func:`pump` for a stream already requested (matchtag ``tag``)."""
    fds = {"stdout": sys.stdout.fileno(), "stderr": sys.stderr.fileno()}
    while True:
        for msg in handle.receive():
            if msg.matchtag != tag:
                continue
            if msg.errnum == errno.ENODATA:
                return
            resp = response_payload(msg)  # raises for any other error
            if resp.get("type") != "output":
                if on_other is not None:
                    on_other(resp)
                continue
            io = resp.get("io") or {}
            stream = str(io.get("stream", "stdout"))
            if as_json:
                if "data" in io:
                    _write_all(fds["stdout"], json.dumps(io).encode() + b"\n")
                continue
            data = decode_io_data(io)
            if data:
                _write_all(fds.get(stream, fds["stdout"]), data)
