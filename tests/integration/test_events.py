"""Process lifecycle events and client services on the real server."""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Any

import pytest
from conftest import Server

from sdexec.client.handle import Handle
from sdexec.client.process import run
from sdexec.client.rpc import RemoteError
from sdexec.proto.message import Message


async def lifecycle(server: Server, cmdline: list[str], label: str | None = None) -> list[Message]:
    h = await Handle.connect(server.uri)
    await h.subscribe("sdexec.proc.")
    result = await run(h, cmdline, env={"PATH": os.environ["PATH"]}, label=label)
    events: list[Message] = []
    while len(events) < 2:
        ev = await asyncio.wait_for(h.event(), 10)
        if ev.json()["pid"] == result.pid:
            events.append(ev)
    await h.close()
    return events


def test_started_and_finished_events_are_published(server: Server) -> None:
    events = asyncio.run(lifecycle(server, ["true"]))
    assert [e.topic for e in events] == ["sdexec.proc.started", "sdexec.proc.finished"]


def test_finished_event_carries_the_wait_status(server: Server) -> None:
    events = asyncio.run(lifecycle(server, ["sh", "-c", "exit 3"]))
    assert events[1].json()["status"] == 3 << 8


def test_events_carry_pid_and_label(server: Server) -> None:
    started, finished = asyncio.run(lifecycle(server, ["true"], label="evlabel"))
    assert started.json()["label"] == finished.json()["label"] == "evlabel"
    assert started.json()["pid"] == finished.json()["pid"] > 0


def test_event_sequence_numbers_increase(server: Server) -> None:
    started, finished = asyncio.run(lifecycle(server, ["true"]))
    assert 0 < started.sequence < finished.sequence


async def _service_round_trip(server: Server) -> dict[str, Any]:
    provider = await Handle.connect(server.uri)
    client = await Handle.connect(server.uri)
    await provider.service_add("itest")

    async def answer() -> None:
        req = await provider.request()
        provider.respond(req, {"got": req.json(), "userid": req.userid})

    async with asyncio.TaskGroup() as tg:
        tg.create_task(answer())
        reply = await client.rpc("itest.hello", {"x": 1})
    await provider.close()
    await client.close()
    return reply


def test_client_service_answers_another_client(server: Server) -> None:
    reply = asyncio.run(_service_round_trip(server))
    assert reply == {"got": {"x": 1}, "userid": os.getuid()}


@pytest.mark.parametrize(("name", "errnum"), [("sdexec", errno.EEXIST), ("a.b", errno.EINVAL)])
def test_service_add_refuses_builtin_and_invalid_names(
    server: Server, name: str, errnum: int
) -> None:
    async def attempt() -> int:
        h = await Handle.connect(server.uri)
        try:
            await h.service_add(name)
        except RemoteError as exc:
            return exc.errno
        finally:
            await h.close()
        return 0

    assert asyncio.run(attempt()) == errnum


def test_attr_get_version(server: Server) -> None:
    async def version() -> str:
        h = await Handle.connect(server.uri)
        value = str((await h.rpc("attr.get", {"name": "version"}))["value"])
        await h.close()
        return value

    from sdexec import __version__

    assert asyncio.run(version()) == __version__
