"""A relay that points flux-core's tests' RFC 42 requests at sdexec (a test helper).

``python rexec_relay.py UPSTREAM SOCKET``: listens on the UNIX socket
SOCKET as a Flux ``local://`` connector endpoint does (one byte 0 to accept,
then framed RFC 3 messages) and, for each client, opens a connection of
its own to the broker's socket UPSTREAM.  Every message passes unchanged,
except a request whose topic is ``rexec.METHOD``: it goes to
``sdexec.METHOD``, and its responses come back under the topic the client
sent.  A test's ``flux exec``, ``flux sproc``, libsubprocess helpers and
Python API, given ``FLUX_URI=local://SOCKET``, then talk to sdexec's module
where they would have talked to the broker's ``rexec``; the broker still
stamps each request with the client's credentials (the relay runs as the
same user) and sends ``sdexec.disconnect`` when a client goes, since each
client has its own upstream connection.

The relay exits when the broker goes away (a connection it keeps to
UPSTREAM is closed), so an instance's shutdown ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable

from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import Message, MsgType

FROM, TO = "rexec.", "sdexec."


async def _open_upstream(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path)
    if await reader.readexactly(1) != b"\0":
        writer.close()
        raise ConnectionRefusedError(f"the broker at {path} refused the connection")
    return reader, writer


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    change: Callable[[Message], None],
    other: asyncio.StreamWriter,
) -> None:
    """Messages from ``reader`` to ``writer``; at the end, both connections close."""
    decoder = FrameDecoder()
    try:
        while data := await reader.read(1 << 16):
            for msg in decoder.feed(data):
                change(msg)
                writer.write(encode_frame(msg))
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        other.close()  # its reader sees the end: the other pump ends too


async def _serve_client(
    upstream: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        up_reader, up_writer = await _open_upstream(upstream)
    except OSError:
        writer.write(bytes([111]))  # ECONNREFUSED
        writer.close()
        return
    writer.write(b"\0")
    renamed: set[int] = set()  # matchtags of requests sent under another topic

    def to_broker(msg: Message) -> None:
        if msg.type != MsgType.REQUEST:
            return
        if msg.topic is not None and msg.topic.startswith(FROM):
            msg.topic = TO + msg.topic[len(FROM) :]
            if msg.matchtag:
                renamed.add(msg.matchtag)
        else:
            renamed.discard(msg.matchtag)

    def to_client(msg: Message) -> None:
        if (
            msg.type == MsgType.RESPONSE
            and msg.matchtag in renamed
            and msg.topic is not None
            and msg.topic.startswith(TO)
        ):
            msg.topic = FROM + msg.topic[len(TO) :]

    async with asyncio.TaskGroup() as tg:
        tg.create_task(_pump(reader, up_writer, to_broker, writer))
        tg.create_task(_pump(up_reader, writer, to_client, up_writer))


async def main(upstream: str, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sentinel_reader, sentinel_writer = await _open_upstream(upstream)
    async with asyncio.TaskGroup() as tg:

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            tg.create_task(_serve_client(upstream, reader, writer))

        server = await asyncio.start_unix_server(client, path)
        print(f"local://{path}", flush=True)
        await sentinel_reader.read()  # EOF: the broker is gone
        server.close()
        sentinel_writer.close()
        # Each client's upstream connection ends with the broker, and its pumps with it.


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: rexec_relay.py UPSTREAM-SOCKET SOCKET")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
