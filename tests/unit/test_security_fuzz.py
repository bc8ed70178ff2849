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
import logging
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from fuzzgen import ALLOWED, TOPICS, generate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdexec.base.errors import SdexecError
from sdexec.broker.builtins import Builtins
from sdexec.broker.router import Router
from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import Message, MsgFlag, MsgType
from sdexec.security.gate import Gate
from sdexec.security.policy import SecurityConfig
from sdexec.server.service import Service
from sdexec.transport.unix import Connection

FUZZ_INPUTS = int(os.environ.get("SDEXEC_FUZZ_INPUTS", "100000"))
UID = os.getuid()


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

    def unwatch(self, unit: str, listener: object = None) -> None:
        pass

    async def start_transient(self, unit: str, props: object, fds: object) -> None:
        raise SdexecError(errno.ENOEXEC, "fake bus: no units here")

    async def kill(self, unit: str, signum: int, who: str = "all") -> None:
        raise SdexecError(errno.ESRCH, "fake bus: no such unit")

    async def kill_mode(self, unit: str) -> str:
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
