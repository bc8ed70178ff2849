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
) -> None:
    """Print a stream's output until it ends; raises the stream's error, if any.

    ``nodeid``: the rank a Flux broker is to route the request to.
    """
    tag = handle.request(topic, payload, streaming=True, nodeid=nodeid)
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
