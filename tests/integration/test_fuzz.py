"""Fuzzing a real server over raw ``local://`` connections.

Each hypothesis example opens its own UNIX connection to the session server,
reads the one-byte handshake and sends one of:

(a) random bytes;
(b) a well-framed message whose parts and PROTO fields are random;
(c) a valid request frame with a random JSON payload to an ``sdexec.*`` topic.

A ``sdexec.list`` sentinel follows, so the example knows when the server has
dealt with the input.  Every answer must be a well-formed response whose
errno is one the protocol allows (EIO would mean a handler crashed), the
sentinel must be answered exactly when the input was a decodable message,
and the server must survive it all.  The only command that can really run
is ``/bin/true``; every other command name cannot be found.

Run with ``-s`` to see how many inputs were tried.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fuzzstrategies
import pytest
from conftest import Server
from fuzzstrategies import ALLOWED_ERRNOS, request_payloads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdexec.base.errors import ProtocolError
from sdexec.proto.framing import FrameDecoder, encode_frame, encode_parts_stream
from sdexec.proto.message import (
    PROTO_MAGIC,
    PROTO_VERSION,
    Message,
    MsgFlag,
    MsgType,
    decode_parts,
)

pytestmark = pytest.mark.integration

EXAMPLES = 800  # per input kind: three kinds, 2,400 inputs in all
MIN_INPUTS = 700  # hypothesis may discard a few examples; still > 2,000 in all
TIMEOUT = 10.0
SENTINEL_TAG = 0x7FFFFF01
# Signals that would leave a /bin/true unit stopped forever if they hit it at the
# wrong moment; they are valid requests, but not ones this test can clean up after.
STOP_SIGNALS = frozenset({19, 20, 21, 22})


INPUTS: Counter[str] = Counter()
ANSWERS: Counter[str] = Counter()

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- a tiny raw client -------------------------------------------------------------------------


class RawConn:
    """One ``local://`` connection: handshake, send bytes, read framed messages."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.decoder = FrameDecoder()
        self.eof = False
        self.received: list[Message] = []
        handshake = self.sock.recv(1)
        assert handshake == b"\x00", f"handshake refused: {handshake!r}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        self.received.extend(self.decoder.feed(data))

    def until_final(self, matchtag: int, stream: bool = False) -> Message | None:
        """Read until the last response to ``matchtag`` arrives (or the server closes).

        That is the first response, or for a ``stream`` the first error response.
        """

        def final() -> Message | None:
            for msg in self.received:
                if msg.type != MsgType.RESPONSE or msg.matchtag != matchtag:
                    continue
                if not stream or msg.errnum:
                    return msg
            return None

        deadline = time.monotonic() + TIMEOUT
        while not self.eof and final() is None:
            assert time.monotonic() < deadline, "server did not answer in time"
            self._read()
        return final()

    def until_response(self, matchtag: int) -> Message | None:
        """Read until the response with ``matchtag`` arrives (or the server closes)."""
        return self.until_final(matchtag)

    def until_eof(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + TIMEOUT
        while not self.eof:
            assert time.monotonic() < deadline, "server did not close in time"
            self._read()

    def close(self) -> None:
        self.sock.close()


@contextmanager
def raw_connection(server: Server) -> Iterator[RawConn]:
    conn = RawConn(server.socket_path)
    try:
        yield conn
    finally:
        conn.close()


def sentinel(matchtag: int = SENTINEL_TAG) -> bytes:
    return encode_frame(Message.request("sdexec.list", {}, matchtag=matchtag))


def check_responses(messages: list[Message]) -> None:
    """Everything a client receives is a response with an allowed errno."""
    for msg in messages:
        assert msg.type == MsgType.RESPONSE, msg
        if msg.errnum:
            name = errno.errorcode.get(msg.errnum, str(msg.errnum))
            ANSWERS[name] += 1
            assert msg.errnum in ALLOWED_ERRNOS, (msg.topic, name, msg.error_text())
        elif msg.payload is not None:
            body = msg.json()  # a success payload is a JSON object
            if msg.matchtag < SENTINEL_TAG:
                ANSWERS[f"{msg.topic} {body.get('type', 'ok')}"] += 1


def rpc(server: Server, topic: str, payload: dict[str, Any]) -> Message:
    """One request on a fresh connection; its (first) response."""
    with raw_connection(server) as conn:
        conn.send(encode_frame(Message.request(topic, payload, matchtag=1)))
        resp = conn.until_response(1)
    assert resp is not None, f"no {topic} response"
    return resp


def list_rpc(server: Server) -> dict[str, Any]:
    """``sdexec.list`` on a fresh connection; the decoded success payload."""
    resp = rpc(server, "sdexec.list", {})
    assert resp.errnum == 0, resp.error_text()
    body = resp.json()
    assert isinstance(body, dict)
    return body


def assert_server_healthy(server: Server) -> None:
    assert server.proc is not None and server.proc.poll() is None, "the server died"
    body = list_rpc(server)
    assert body["rank"] == 0
    assert isinstance(body["procs"], list)


# --- (a) random bytes ------------------------------------------------------------------------


MAGIC = struct.pack("=I", 0xFFEE0012)

random_streams = st.binary(max_size=300) | st.builds(
    lambda length, tail: MAGIC + struct.pack(">I", length) + tail,
    st.integers(0, 600) | st.integers(0, 2**32 - 1),
    st.binary(max_size=300),
)


def test_random_bytes_never_hurt_the_server(server: Server) -> None:
    @FUZZ_SETTINGS
    @given(data=random_streams)
    def fuzz(data: bytes) -> None:
        INPUTS["bytes"] += 1
        with raw_connection(server) as conn:
            conn.send(data)
            conn.until_eof()  # our EOF (or a framing error) ends the connection
            check_responses(conn.received)

    fuzz()
    print(f"\nfuzz: {INPUTS['bytes']} random byte streams")
    assert INPUTS["bytes"] >= MIN_INPUTS
    assert_server_healthy(server)


# --- (b) well-framed messages with random parts ------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
protos = st.builds(
    lambda magic, version, mtype, flags, userid, rolemask, aux1, aux2: struct.pack(
        ">BBBBIIII", magic, version, mtype, flags, userid, rolemask, aux1, aux2
    ),
    st.sampled_from([PROTO_MAGIC] * 9 + [0]),
    st.sampled_from([PROTO_VERSION] * 9 + [2]),
    st.sampled_from([*MsgType.ALL, 0, 3, 0xFF]),
    st.integers(0, 255),
    u32,
    u32,
    u32,
    u32.filter(lambda tag: tag != SENTINEL_TAG),
) | st.binary(max_size=24)
parts_lists = st.builds(
    lambda body, proto: [*body, proto],
    st.lists(
        st.sampled_from(
            [b"", b"sdexec.list", b"sdexec.exec", b"attr.get", b"{}\0", b"\xff", b"r" * 300]
        )
        | st.binary(max_size=40),
        max_size=5,
    ),
    protos,
)


def decodable(parts: list[bytes]) -> bool:
    try:
        decode_parts(parts)
    except ProtocolError:
        return False
    return True


def test_random_well_framed_messages_never_hurt_the_server(server: Server) -> None:
    @FUZZ_SETTINGS
    @given(parts=parts_lists)
    def fuzz(parts: list[bytes]) -> None:
        INPUTS["frames"] += 1
        with raw_connection(server) as conn:
            conn.send(encode_parts_stream(parts) + sentinel())
            answer = conn.until_response(SENTINEL_TAG)
            if decodable(parts):
                assert answer is not None, "a decodable message broke the connection"
            else:
                assert answer is None, "an undecodable message did not close the connection"
                assert conn.eof
            check_responses(conn.received)

    fuzz()
    print(f"\nfuzz: {INPUTS['frames']} random well-framed messages")
    assert INPUTS["frames"] >= MIN_INPUTS
    assert_server_healthy(server)


# --- (c) valid requests with random payloads -------------------------------------------------

texts = st.text(max_size=8)
json_values = fuzzstrategies.json_values(
    texts, st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | texts, 3
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = json_values) -> Any:
    return fuzzstrategies.mostly(good, bad)


not_absolute = json_values.filter(lambda v: not (isinstance(v, str) and v.startswith("/")))
# Only /bin/true can run: every other command name is one nobody has.
argv0 = st.sampled_from(["/bin/true"] * 4 + ["", "/", "/etc/passwd", "./x", "/bin/true/x"]) | (
    st.builds(lambda s: f"sdx-fuzz-nonexistent-{s}", texts)
)
opts = st.dictionaries(
    st.sampled_from(["stdin_BUFSIZE", "SDEXEC_PROP_Nope", "SDEXEC_PROP_MemoryMax", "x"])
    | texts.filter(lambda k: not k.startswith("SDEXEC")),
    st.sampled_from(["1", "4k", "1G", "bogus", ""]) | texts,
    max_size=2,
)
cmds = mostly(
    st.fixed_dictionaries(
        {
            "cmdline": mostly(
                st.tuples(argv0, st.lists(texts, max_size=2)).map(lambda t: [t[0], *t[1]])
            ),
            "env": mostly(
                st.dictionaries(
                    mostly(st.sampled_from(["PATH", "A", "B=C", ""]), texts),
                    mostly(st.sampled_from(["/usr/bin:/bin", "", "x"]), texts),
                    max_size=2,
                )
            ),
        },
        optional={
            "opts": mostly(opts),
            "channels": mostly(st.lists(texts, max_size=1)),
            # A missing absolute cwd is left to test_bug_failed_waitable_exec_leaves_no_unit.
            "cwd": mostly(st.sampled_from(["/", "/tmp", "rel", ""]), not_absolute),
            "label": mostly(st.sampled_from(["fz-a", "fz-b", ""])),
        },
    )
)
io_objects = mostly(
    st.fixed_dictionaries(
        {"stream": mostly(st.sampled_from(["stdin", "x"]))},
        optional={
            "data": mostly(texts),
            "encoding": mostly(st.sampled_from(["base64", "UTF-8", "x"])),
            "eof": mostly(st.booleans()),
        },
    )
)
labels = mostly(st.sampled_from(["fz-a", "fz-b", ""]))
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "cmd": cmds,
    "flags": mostly(st.integers(0, 31)),
    "local_flags": mostly(st.integers(0, 7)),
    "pid": mostly(st.integers(-1, 2**22)),
    "label": labels,
    "signum": mostly(st.integers(-2, 70).filter(lambda n: n not in STOP_SIGNALS)),
    "matchtag": mostly(st.integers(0, 1000)),
    "io": io_objects,
    "name": mostly(st.sampled_from(["rank", "size", "version", "nope"])),
    "tail": mostly(st.integers(-1, 3)),
    "follow": mostly(st.booleans()),
}
TOPICS = [
    *["sdexec.exec"] * 4,
    *["sdexec.write", "sdexec.kill", "sdexec.wait"] * 2,
    "sdexec.attach",
    "sdexec.logs",
    "sdexec.list",
    "sdexec.disconnect",
    "sdexec.nope",
    "attr.get",
    "state-machine.wait",
]


@st.composite
def requests(draw: st.DrawFn) -> Message:
    """A request frame's message (the test numbers the matchtags)."""
    topic = draw(st.sampled_from(TOPICS))
    flags = draw(st.sampled_from([0, 0, MsgFlag.STREAMING, MsgFlag.NORESPONSE]))
    msg = Message.request(topic, flags=int(flags), nodeid=draw(st.sampled_from([0xFFFFFFFF, 0, 7])))
    method = topic.removeprefix("sdexec.")
    msg.payload = draw(request_payloads(method, FIELDS, json_values, texts, []))
    msg.userid = draw(st.sampled_from([0, 0xFFFFFFFF, 1234]))  # never trusted
    return msg


def awaited(msgs: list[Message]) -> list[Message]:
    """Requests whose final answer comes later, from an async handler: exec and kill.

    A ``sdexec.disconnect`` in the same batch may drop an exec's stream before its
    end, so then nothing is awaited (the connection's close cleans up anyway).
    """
    if any(m.topic == "sdexec.disconnect" for m in msgs):
        return []
    return [m for m in msgs if m.topic in ("sdexec.exec", "sdexec.kill") and not m.noresponse]


def test_valid_requests_with_random_payloads_get_allowed_answers(server: Server) -> None:
    @FUZZ_SETTINGS
    @given(msgs=st.lists(requests(), min_size=1, max_size=3))
    def fuzz(msgs: list[Message]) -> None:
        INPUTS["requests"] += len(msgs)
        for i, msg in enumerate(msgs):
            msg.aux2 = 0 if msg.noresponse else i + 1  # Flux sends NORESPONSE untagged
        with raw_connection(server) as conn:
            conn.send(b"".join(encode_frame(m) for m in msgs) + sentinel())
            assert conn.until_response(SENTINEL_TAG) is not None, "connection lost"
            # A second round trip: answers queued by async handlers before it arrive first.
            conn.send(sentinel(SENTINEL_TAG + 1))
            assert conn.until_response(SENTINEL_TAG + 1) is not None, "connection lost"
            for msg in awaited(msgs):
                final = conn.until_final(msg.matchtag, msg.topic == "sdexec.exec" and msg.streaming)
                assert final is not None, f"no final answer to {msg.topic}"
            check_responses(conn.received)
            tagged = [
                m for m in conn.received if m.matchtag not in (SENTINEL_TAG, SENTINEL_TAG + 1)
            ]
            assert all(m.matchtag != 0 for m in tagged), "a NORESPONSE request was answered"

    fuzz()
    print(f"\nfuzz: {INPUTS['requests']} random requests; answers seen: {dict(ANSWERS)}")
    assert INPUTS["requests"] >= MIN_INPUTS
    assert_server_healthy(server)


# --- afterwards --------------------------------------------------------------------------------


def test_fuzzers_tried_at_least_2000_inputs() -> None:
    if len(INPUTS) < 3:
        pytest.skip("counts all three fuzzers: run the whole module")
    total = sum(INPUTS.values())
    print(f"\nfuzz: {total} inputs in all: {dict(INPUTS)}")
    assert total >= 2000


def test_server_still_answers_list_on_a_fresh_connection(server: Server) -> None:
    assert_server_healthy(server)


def test_waitable_processes_left_by_the_fuzzer_can_be_waited_for(server: Server) -> None:
    # A waitable background process is kept (RemainAfterExit) until someone waits.
    for proc in list_rpc(server)["procs"]:
        resp = rpc(server, "sdexec.wait", {"pid": proc["pid"]})
        if resp.errnum == 0:
            assert isinstance(resp.json()["status"], int)
        else:
            assert resp.errnum == errno.EINVAL, resp.error_text()  # not waitable
    assert all(p["state"] != "Z" for p in list_rpc(server)["procs"])


def test_failed_waitable_exec_leaves_no_unit(server: Server) -> None:
    cmd = {"cmdline": ["/bin/true"], "env": {}, "opts": {}, "channels": [], "cwd": "/nonexistent"}
    before = set(server.units())
    resp = rpc(server, "sdexec.exec", {"cmd": cmd, "flags": 16})  # WAITABLE, background
    try:
        assert resp.errnum != 0, "the exec should fail: its cwd does not exist"
        deadline = time.monotonic() + 5
        left = set(server.units()) - before
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = set(server.units()) - before
        assert left == set()
    finally:
        for unit in set(server.units()) - before:
            server.systemctl("stop", unit)
            server.systemctl("reset-failed", unit)


def test_no_sdexec_unit_is_left_running(server: Server) -> None:
    deadline = time.monotonic() + 15
    units = server.units()
    while units and time.monotonic() < deadline:
        time.sleep(0.2)
        units = server.units()
    assert units == []
