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
from sdexec.proto.message import NODEID_ANY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def target(args: Any) -> tuple[str | None, int]:
    """(URI, nodeid) of the server a command reaches: ``--uri``, or ``-r RANK``."""
    if getattr(args, "rank", None) is None:
        return args.uri, NODEID_ANY
    from sdexec.cluster.ranks import one_rank

    host = one_rank(args.hosts, args.rank)
    return host.uri, host.nodeid


def pump(
    handle: BlockingHandle,
    topic: str,
    payload: dict[str, Any],
    on_other: Callable[[dict[str, Any]], None] | None = None,
    as_json: bool = False,
    nodeid: int = NODEID_ANY,
    timestamps: bool = False,
) -> None:
    """Print a stream's output until it ends; raises the stream's error, if any.

    ``nodeid``: the rank a Flux broker is to route the request to.
    ``timestamps``: each line starts with when it was written (as journalctl
    ``-o short-precise`` shows it), from the responses' ``timestamp``.
    """
    tag = handle.request(topic, payload, streaming=True, nodeid=nodeid)
    follow(handle, tag, on_other, as_json, timestamps)


def first_response(handle: BlockingHandle, tag: int) -> dict[str, Any]:
    """The first response of stream ``tag`` (raises its error; EPROTO if it just ends).

    Responses that came with it stay queued for the next ``receive``.
    """
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
    timestamps: bool = False,
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
            when = resp.get("timestamp")
            if as_json:
                if "data" in io:
                    record = {**io, "timestamp": when} if timestamps and when is not None else io
                    _write_all(fds["stdout"], json.dumps(record).encode() + b"\n")
                continue
            data = decode_io_data(io)
            if data and timestamps and isinstance(when, (int, float)):
                data = stamp(when) + data
            if data:
                _write_all(fds.get(stream, fds["stdout"]), data)


def stamp(when: float) -> bytes:
    """``Nov 23 10:00:00.123456 ``: local time, as journalctl -o short-precise."""
    import time

    seconds, micro = divmod(round(when * 1_000_000), 1_000_000)
    return time.strftime("%b %d %H:%M:%S", time.localtime(seconds)).encode() + (
        f".{micro:06d} ".encode()
    )
