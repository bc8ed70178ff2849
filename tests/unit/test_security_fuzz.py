"""Fuzzing the codec, the authentication gate and every RFC 42 handler, with no systemd.

The real server stack (framing decoder, connection, router, authentication
gate, built-ins and the RFC 42 service) runs on an event loop with fake
transports and a fake bus whose ``StartTransientUnit`` always fails, so an
``exec`` that passes validation goes through the whole path (pipes, unit
properties, guest confinement) and is then cleaned up.

Inputs come from a seeded generator (fast enough for 100,000 and more in the
CI budget) that mixes raw bytes, broken frames, valid frames with random
topics and payloads, mutated RFC 42 requests, and signed (``none``) and
tampered signed requests; and from hypothesis, for structure-aware JSON.
Each input must be answered without an internal error (EIO): bad requests
get EPROTO, EINVAL or the errno the rules name; a broken stream closes only
its own connection.  Afterwards a new client must still get ``list``.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdexec.broker.builtins import Builtins
from sdexec.broker.router import Router
from sdexec.errors import SdexecError
from sdexec.proto.framing import FrameDecoder, encode_frame, encode_parts_stream
from sdexec.proto.message import Message, MsgFlag, MsgType
from sdexec.security import sign
from sdexec.security.gate import Gate
from sdexec.security.policy import SecurityConfig
from sdexec.server.service import Service
from sdexec.transport.unix import Connection

FUZZ_INPUTS = int(os.environ.get("SDEXEC_FUZZ_INPUTS", "100000"))
UID = os.getuid()
TOPICS = [
    "sdexec.exec",
    "sdexec.write",
    "sdexec.kill",
    "sdexec.wait",
    "sdexec.list",
    "sdexec.attach",
    "sdexec.disconnect",
    "attr.get",
    "state-machine.wait",
    "sdexec.nope",
    "",
    "x" * 300,
]
# Errnos a bad or unauthorised request may get; EIO (an internal error) is never one.
ALLOWED = {
    errno.EPROTO,
    errno.EINVAL,
    errno.EPERM,
    errno.ENOSYS,
    errno.ESRCH,
    errno.ENOENT,
    errno.EEXIST,
    errno.EACCES,
    errno.ENOTDIR,
    errno.ENOEXEC,
    errno.EBUSY,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EAGAIN,
}


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Millions of refusal events would cost more than the fuzzing itself."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    yield
    structlog.reset_defaults()


class FakeBus:
    """Enough of SystemdBus for the service; every unit start fails."""

    def watch(self, unit: str, listener: object) -> None:
        pass

    def unwatch(self, unit: str) -> None:
        pass

    async def start_transient(self, unit: str, props: object, fds: object) -> None:
        raise SdexecError(errno.ENOEXEC, "fake bus: no units here")

    async def kill(self, unit: str, signum: int, who: str = "all") -> None:
        raise SdexecError(errno.ESRCH, "fake bus: no such unit")

    async def stop(self, unit: str) -> None:
        pass


class FakeTransport:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.out = bytearray()
        self.closing = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.conn.connection_lost(None)

    abort = close


class Stack:
    """A server stack on fake transports."""

    def __init__(self, tg: asyncio.TaskGroup, *, owner: int = UID) -> None:
        config = SecurityConfig(server_uid=UID, owner=owner, max_connections=10**6)
        self.router = Router(owner_uid=owner, server_uid=UID)
        self.router.attach(tg)
        self.gate = Gate(self.router, config)
        self.gate.install()
        Builtins(self.router, rank=0, size=1, owner=owner)
        self.service = Service(self.router, FakeBus())  # type: ignore[arg-type]

    def connect(self, uid: int = UID) -> tuple[Connection, FakeTransport]:
        conn = Connection(self.router)
        transport = FakeTransport(conn)
        conn.transport = transport  # type: ignore[assignment]
        conn.uid, conn.gid, conn.pid = uid, uid, 1
        assert self.router.accept(conn) == 0
        conn.accepted = True
        return conn, transport


def responses(transport: FakeTransport) -> list[Message]:
    msgs = FrameDecoder().feed(bytes(transport.out))
    transport.out.clear()
    return msgs


def check(msgs: list[Message]) -> None:
    for m in msgs:
        assert m.type == MsgType.RESPONSE
        if m.errnum:
            assert m.errnum in ALLOWED, (m.errnum, m.error_text())


def _rand_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 15, 2**31, -(2**63), 2**64, 7])
    if kind == 3:
        return rng.random() * 1e6
    if kind == 4:
        return rng.choice(["", "stdin", "true", "/bin/true", "-1", "\x00", "é", "x" * 50])
    if kind == 5:
        return rng.choice(["sdexec.exec", "sdexec.list", "base64", "UTF-8"])
    if kind == 6:
        return [_rand_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["cmd", "flags", "pid", "label", "io", "signum", "matchtag", "name", "x"]): (
            _rand_json(rng, depth + 1)
        )
        for _ in range(rng.randrange(4))
    }


TEMPLATES: dict[str, dict[str, Any]] = {
    "sdexec.exec": {
        "cmd": {"cmdline": ["true"], "env": {"PATH": "/usr/bin:/bin"}, "opts": {}, "channels": []},
        "flags": 3,
        "local_flags": 0,
    },
    "sdexec.write": {"matchtag": 1, "io": {"stream": "stdin", "rank": "0", "data": "hi"}},
    "sdexec.kill": {"pid": 1, "signum": 15},
    "sdexec.wait": {"pid": 1},
    "sdexec.list": {},
    "attr.get": {"name": "security.owner"},
}


def _mutate(rng: random.Random, obj: Any) -> Any:
    if isinstance(obj, dict) and obj and rng.random() < 0.7:
        obj = dict(obj)
        key = rng.choice(list(obj))
        action = rng.randrange(4)
        if action == 0:
            del obj[key]
        elif action == 1:
            obj[key] = _rand_json(rng)
        else:
            obj[key] = _mutate(rng, obj[key])
        return obj
    if isinstance(obj, list) and obj and rng.random() < 0.5:
        obj = list(obj)
        obj[rng.randrange(len(obj))] = _rand_json(rng)
        return obj
    return _rand_json(rng) if rng.random() < 0.3 else obj


def generate(rng: random.Random) -> tuple[str, bytes]:
    """One fuzz input: (kind, bytes on the wire)."""
    kind = rng.randrange(10)
    topic = rng.choice(TOPICS)
    flags = rng.choice([0, MsgFlag.STREAMING, MsgFlag.NORESPONSE, 0xFF])
    if kind == 0:  # raw bytes
        return "raw", rng.randbytes(rng.randrange(1, 64))
    if kind == 1:  # a valid frame with corrupted bytes
        frame = bytearray(encode_frame(Message.request("sdexec.list", {}, matchtag=1)))
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        return "corrupt", bytes(frame)
    if kind == 2:  # random parts
        parts = [rng.randbytes(rng.randrange(0, 30)) for _ in range(rng.randrange(0, 5))]
        return "parts", encode_parts_stream(parts)
    if kind == 3:  # random payload bytes
        msg = Message.request(topic, rng.randbytes(rng.randrange(0, 40)), matchtag=1, flags=flags)
        return "payload-bytes", encode_frame(msg)
    if kind in (4, 5, 6):  # mutated RFC 42 request
        t = rng.choice(list(TEMPLATES))
        body = _mutate(rng, TEMPLATES[t])
        payload = body if isinstance(body, dict) else {"x": body}
        msg = Message.request(t, payload, matchtag=rng.randrange(1, 5), flags=flags)
        return "mutated", encode_frame(msg)
    if kind == 7:  # random JSON payload
        return "json", encode_frame(
            Message.request(topic, {"v": _rand_json(rng)}, matchtag=2, flags=flags)
        )
    if kind == 8:  # signed, possibly with the wrong topic
        t = rng.choice(list(TEMPLATES))
        body = _mutate(rng, TEMPLATES[t])
        obj = dict(body) if isinstance(body, dict) else {}
        obj["topic"] = t if rng.random() < 0.8 else rng.choice(TOPICS)
        sig = sign.wrap(json.dumps(obj).encode(), sign.NONE)
        return "signed", encode_frame(Message.request(t, {"signature": sig}, matchtag=3))
    # a malformed or tampered signature
    t = rng.choice(list(TEMPLATES))
    value: Any = rng.choice(
        [
            sign.wrap(b"{}", sign.NONE)[:-2],
            sign.wrap(b'{"topic":"' + t.encode() + b'"}', sign.NONE).replace("none", "nonf"),
            _rand_json(rng),
            "a.b.c",
            "....",
        ]
    )
    return "bad-signature", encode_frame(Message.request(t, {"signature": value}, matchtag=4))


async def _run_fuzz(n: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    async with asyncio.TaskGroup() as tg:
        stack = Stack(tg)
        conn, transport = stack.connect()
        for i in range(n):
            kind, data = generate(rng)
            counts[kind] = counts.get(kind, 0) + 1
            if transport.closing:
                conn, transport = stack.connect()
            conn.data_received(data)
            if i % 64 == 0:
                for _ in range(3):
                    await asyncio.sleep(0)
            check(responses(transport))
        for _ in range(5):
            await asyncio.sleep(0)
        check(responses(transport))
        # Another client is served afterwards.
        other, other_t = stack.connect()
        other.data_received(encode_frame(Message.request("sdexec.list", {}, matchtag=9)))
        (answer,) = responses(other_t)
        assert answer.errnum == 0 and answer.json()["procs"] == []
        counts["list-after"] = 1
        stack.gate.close()
    return counts


def test_100k_fuzz_inputs_get_no_internal_error_and_list_still_works(capsys: Any) -> None:
    start = time.monotonic()
    counts = asyncio.run(_run_fuzz(FUZZ_INPUTS, seed=42))
    elapsed = time.monotonic() - start
    total = sum(v for k, v in counts.items() if k != "list-after")
    assert total == FUZZ_INPUTS >= 100_000 or "SDEXEC_FUZZ_INPUTS" in os.environ
    with capsys.disabled():
        detail = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(f"\nfuzz: {total} inputs in {elapsed:.1f}s ({detail}); list answered afterwards")


# --- structure-aware inputs with hypothesis -------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


class Tasks:
    """A TaskGroup stand-in for a loop driven step by step (hypothesis examples)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tasks: set[asyncio.Task[Any]] = set()

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


@pytest.fixture(scope="module")
def stepped() -> Iterator[tuple[asyncio.AbstractEventLoop, Stack]]:
    loop = asyncio.new_event_loop()
    tasks = Tasks(loop)
    stack = Stack(tasks)  # type: ignore[arg-type]
    yield loop, stack
    stack.gate.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(
    topic=st.sampled_from([t for t in TOPICS if t.startswith("sdexec.")]),
    payload=st.dictionaries(
        st.sampled_from(
            ["cmd", "flags", "local_flags", "pid", "label", "signum", "matchtag", "io", "signature"]
        ),
        _json,
    ),
    streaming=st.booleans(),
)
def test_any_json_payload_to_any_handler_gets_no_internal_error(
    stepped: tuple[asyncio.AbstractEventLoop, Stack],
    topic: str,
    payload: dict[str, Any],
    streaming: bool,
) -> None:
    loop, stack = stepped
    conn, transport = stack.connect()
    flags = MsgFlag.STREAMING if streaming else 0
    conn.data_received(encode_frame(Message.request(topic, payload, matchtag=1, flags=flags)))
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    check(responses(transport))
    transport.close()


def test_non_json_payload_is_eproto() -> None:
    async def run() -> list[Message]:
        async with asyncio.TaskGroup() as tg:
            stack = Stack(tg)
            conn, transport = stack.connect()
            conn.data_received(encode_frame(Message.request("sdexec.kill", b"{nope", matchtag=1)))
            return responses(transport)

    (resp,) = asyncio.run(run())
    assert resp.errnum == errno.EPROTO


def test_deeply_nested_json_payload_is_eproto() -> None:
    async def run() -> list[Message]:
        async with asyncio.TaskGroup() as tg:
            stack = Stack(tg)
            conn, transport = stack.connect()
            deep = b"[" * 100_000 + b"]" * 100_000
            conn.data_received(encode_frame(Message.request("sdexec.kill", deep, matchtag=1)))
            return responses(transport)

    (resp,) = asyncio.run(run())
    assert resp.errnum == errno.EPROTO


def test_a_broken_stream_closes_only_its_own_connection() -> None:
    async def run() -> tuple[bool, bool, list[Message]]:
        async with asyncio.TaskGroup() as tg:
            stack = Stack(tg)
            bad, bad_t = stack.connect()
            good, good_t = stack.connect()
            bad.data_received(b"\x00" * 16)
            good.data_received(encode_frame(Message.request("sdexec.list", {}, matchtag=1)))
            return bad_t.closing, good_t.closing, responses(good_t)

    bad_closed, good_closed, answers = asyncio.run(run())
    assert (bad_closed, good_closed, [m.errnum for m in answers]) == (True, False, [0])
