"""stdin credit and output back-pressure: bounded server memory, nothing lost."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import socket
import time

from conftest import Server
from rpc import Raw, exec_payload


def server_memory(server: Server) -> tuple[int, int]:
    """(VmRSS, VmHWM) of the server process, in bytes."""
    assert server.proc is not None
    fields = {}
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def test_five_mib_through_a_4096_byte_stdin_buffer(server: Server) -> None:
    data = os.urandom(5 << 20)
    raw = Raw(server.socket_path)
    tag = raw.send("sdexec.exec", exec_payload(["sha256sum"]), streaming=True)
    credit = 4096  # RFC 42: a client may borrow the default buffer size
    sent = 0
    outstanding: list[bytes] = []
    peak_rss = 0
    while sent < len(data):
        if credit > 0:
            chunk = data[sent : sent + min(credit, 4096)]
            io = {
                "stream": "stdin",
                "rank": "0",
                "data": base64.b64encode(chunk).decode(),
                "encoding": "base64",
            }
            raw.send("sdexec.write", {"matchtag": tag, "io": io}, noresponse=True)
            sent += len(chunk)
            credit -= len(chunk)
            continue
        m = raw.recv(tag)
        body = m.json()
        if body["type"] == "add-credit":
            credit += body["channels"]["stdin"]
        elif body["type"] == "output":
            outstanding.append(body["io"].get("data", "").encode())
        peak_rss = max(peak_rss, server_memory(server)[0])
    raw.send(
        "sdexec.write",
        {"matchtag": tag, "io": {"stream": "stdin", "rank": "0", "eof": True}},
        noresponse=True,
    )
    msgs = raw.stream(tag)
    raw.close()
    assert msgs[-1].errnum == errno.ENODATA
    out = b"".join(outstanding) + b"".join(
        m.json()["io"].get("data", "").encode()
        for m in msgs
        if not m.errnum and m.json()["type"] == "output"
    )
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
    _rss, hwm = server_memory(server)
    print(
        f"5 MiB through stdin credit: server RSS peak during {peak_rss >> 20} MiB, "
        f"VmHWM {hwm >> 20} MiB"
    )
    assert credit <= 4096


def test_slow_reader_bounds_server_memory_and_loses_nothing(server: Server) -> None:
    total = 100 << 20
    raw = Raw(server.socket_path)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    # head -c writes 100 MiB of one repeated pattern; each chunk is checked in order.
    tag = raw.send(
        "sdexec.exec",
        exec_payload(
            [
                "sh",
                "-c",
                f"yes 0123456789abcdef0123456789abcdef0123456789abcdef01234567890 | "
                f"head -c {total}",
            ]
        ),
        streaming=True,
    )
    pattern = b"0123456789abcdef0123456789abcdef0123456789abcdef01234567890\n"
    received = 0
    digest = hashlib.sha256()
    peak = 0
    t0 = time.monotonic()
    done = False
    while not done:
        m = raw.recv(tag)
        if m.errnum:
            assert m.errnum == errno.ENODATA
            break
        body = m.json()
        if body["type"] == "output" and body["io"]["stream"] == "stdout" and "data" in body["io"]:
            chunk = body["io"]["data"].encode()
            digest.update(chunk)
            received += len(chunk)
            # read at about 1 MiB/s
            ahead = received / (1 << 20) - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
            peak = max(peak, server_memory(server)[0])
    raw.close()
    expected = hashlib.sha256((pattern * (total // len(pattern) + 1))[:total]).hexdigest()
    print(
        f"100 MiB at 1 MiB/s: {received} bytes in {time.monotonic() - t0:.0f} s, "
        f"server RSS peak {peak / (1 << 20):.1f} MiB"
    )
    assert received == total
    assert digest.hexdigest() == expected
    assert peak < 64 << 20
