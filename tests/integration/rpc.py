"""A tiny raw RFC 6 client for tests that need to see individual responses."""

from __future__ import annotations

import os
import socket
from typing import Any

from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import Message, MsgFlag


class Raw:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        assert self.sock.recv(1) == b"\0"
        self.dec = FrameDecoder()
        self.inbox: list[Message] = []
        self.tag = 0

    def send(
        self,
        topic: str,
        payload: dict[str, Any] | None,
        *,
        streaming: bool = False,
        noresponse: bool = False,
    ) -> int:
        self.tag += 1
        flags = (MsgFlag.STREAMING if streaming else 0) | (MsgFlag.NORESPONSE if noresponse else 0)
        tag = 0 if noresponse else self.tag
        self.sock.sendall(encode_frame(Message.request(topic, payload, matchtag=tag, flags=flags)))
        return tag

    def recv(self, tag: int) -> Message:
        while True:
            for i, m in enumerate(self.inbox):
                if m.matchtag == tag:
                    return self.inbox.pop(i)
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self.inbox.extend(self.dec.feed(data))

    def rpc(
        self, topic: str, payload: dict[str, Any] | None = None, streaming: bool = False
    ) -> Message:
        return self.recv(self.send(topic, payload, streaming=streaming))

    def stream(self, tag: int) -> list[Message]:
        """All responses of a stream up to and including its terminating error."""
        out = []
        while True:
            m = self.recv(tag)
            out.append(m)
            if m.errnum:
                return out

    def close(self) -> None:
        self.sock.close()


def exec_payload(
    argv: list[str], flags: int = 11, label: str | None = None, opts: dict[str, str] | None = None
) -> dict[str, Any]:
    cmd: dict[str, Any] = {
        "cmdline": argv,
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "opts": opts or {},
        "channels": [],
        "cwd": "/",
    }
    if label is not None:
        cmd["label"] = label
    return {"cmd": cmd, "flags": flags}


def types(msgs: list[Message]) -> list[str]:
    return [m.json()["type"] if not m.errnum else f"errno={m.errnum}" for m in msgs]


def exec_stream(
    path: str,
    argv: list[str],
    *,
    flags: int = 11,
    opts: dict[str, str] | None = None,
    writes: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
) -> list[dict[str, Any]]:
    """One streaming exec, its writes sent after ``started``; every response until ENODATA.

    ``output`` responses are flattened: ``stream``, ``data`` (bytes) and ``eof``.
    An error response other than ENODATA raises OSError with its errno and text.
    """
    from sdexec.proto.iodata import decode_io_data

    raw = Raw(path)
    try:
        tag = raw.send("sdexec.exec", exec_payload(argv, flags, opts=opts), streaming=True)
        out: list[dict[str, Any]] = []
        while True:
            m = raw.recv(tag)
            if m.errnum == 61:
                return out
            if m.errnum:
                raise OSError(m.errnum, m.error_text())
            resp = m.json()
            if resp["type"] == "output":
                io = resp["io"]
                resp = {"type": "output", "stream": io["stream"], "data": decode_io_data(io)}
                resp["eof"] = io.get("eof", False)
            elif resp["type"] == "started":
                for stream, data in writes:
                    io = {"stream": stream, "rank": "0", "data": data.decode()}
                    raw.send("sdexec.write", {"matchtag": tag, "io": io}, noresponse=True)
            out.append(resp)
    finally:
        raw.close()
