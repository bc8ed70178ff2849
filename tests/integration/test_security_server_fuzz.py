"""Fuzzing a real server over its real socket; afterwards it still answers ``list``.

The unit-level fuzz (tests/unit/test_security_fuzz.py) pushes 100,000 inputs
through the server stack with a fake bus; this one sends the same kinds of
input to a real ``sdexec serve`` on the private systemd manager, where a
mutated ``exec`` that is still valid really starts a unit (the generator's
commands are harmless: ``true`` and friends).
"""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import time

import pytest
from conftest import Server
from fuzzgen import ALLOWED, generate
from secfixtures import ServerFactory, make_server, public_dir  # noqa: F401 (fixtures)

from sdexec.base.errors import ProtocolError
from sdexec.proto.framing import FrameDecoder
from sdexec.proto.message import MsgType

INPUTS = int(os.environ.get("SDEXEC_FUZZ_REAL_INPUTS", "10000"))
STREAM_BREAKERS = {"raw", "corrupt", "parts"}


@pytest.fixture(scope="module")
def fuzz_server(make_server: ServerFactory) -> Server:  # noqa: F811
    return make_server("fuzz")


class Client:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        assert self.sock.recv(1) == b"\0"
        self.sock.setblocking(False)
        self.decoder = FrameDecoder()
        self.closed = False
        self.errnums: dict[int, int] = {}

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.closed:
            try:
                n = self.sock.send(view)
                view = view[n:]
            except BlockingIOError:
                self.drain(wait=0.01)
            except OSError:
                self.closed = True

    def drain(self, wait: float = 0.0) -> None:
        if wait:
            time.sleep(wait)
        while not self.closed:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            try:
                msgs = self.decoder.feed(data)
            except ProtocolError:
                self.closed = True
                return
            for m in msgs:
                assert m.type == MsgType.RESPONSE
                if m.errnum:
                    self.errnums[m.errnum] = self.errnums.get(m.errnum, 0) + 1

    def close(self) -> None:
        self.sock.close()


def test_real_server_survives_fuzz_and_answers_list(
    fuzz_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(7)
    start = time.monotonic()
    client = Client(fuzz_server.socket_path)
    errnums: dict[int, int] = {}
    closed_by_server = 0

    def collect(c: Client) -> None:
        for k, v in c.errnums.items():
            errnums[k] = errnums.get(k, 0) + v
        c.close()

    for i in range(INPUTS):
        kind, data = generate(rng)
        if kind in STREAM_BREAKERS:
            # A broken byte stream cannot be resynchronised: give it its own connection.
            own = Client(fuzz_server.socket_path)
            own.send(data)
            own.drain(wait=0.0002)
            closed_by_server += own.closed
            collect(own)
            continue
        if client.closed:
            collect(client)
            client = Client(fuzz_server.socket_path)
        client.send(data)
        client.drain(wait=0.0005 if i % 64 == 0 else 0.0)
    client.drain(wait=0.5)
    collect(client)
    elapsed = time.monotonic() - start
    r = fuzz_server.sdexec("ps", "--json")
    with capsys.disabled():
        print(
            f"\nreal-server fuzz: {INPUTS} inputs in {elapsed:.1f}s, {closed_by_server} "
            f"connections closed for bad framing, "
            f"error responses by errno {dict(sorted(errnums.items()))}; "
            f"list afterwards: exit {r.returncode}"
        )
    assert r.returncode == 0, r.stderr
    assert "procs" in json.loads(r.stdout)
    assert set(errnums) <= ALLOWED | {errno.ENODATA}, errnums  # ENODATA ends a stream
    assert fuzz_server.proc is not None and fuzz_server.proc.poll() is None
    assert "handler crashed" not in fuzz_server.log_text()
