"""A client run under ``sdexec proxy --reconnect`` by test_proxy_reconnect.py.

It subscribes to events, registers the service ``svc``, leaves one RPC
pending (``svc.hang``, which it never answers), prints ``ready`` and waits
for the test to kill the server.  While the server is down (the test starts
it again only once this prints ``down``) it makes one RPC of its own and
runs ``sdexec exec``: the proxy holds both until it has reconnected.  Then
it records, as one JSON line, what happened to the pending RPC, to the held
requests, and whether events, its service and ``sdexec exec`` work again.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from sdexec.base.errors import SdexecError
from sdexec.client.handle import Handle
from sdexec.proto.message import Message

CLI = (sys.executable, "-m", "sdexec.cli.main")
PIPE = asyncio.subprocess.PIPE


async def serve(h: Handle, hang_seen: asyncio.Event) -> None:
    while True:
        req = await h.request()
        if req.topic == "svc.hang":
            hang_seen.set()  # and never answer
        elif req.topic == "svc.echo":
            h.respond(req, {"echo": req.json()})


async def outcome_of(call: Any) -> int | str:
    """``"answered"`` or the errno the call failed with."""
    try:
        await call
    except SdexecError as exc:
        return exc.errno
    return "answered"


async def next_event(h: Handle, topic: str) -> Message:
    while True:
        ev = await h.event()
        if ev.topic == topic:
            return ev


async def main() -> None:
    report: dict[str, Any] = {}
    h = await Handle.connect()
    await h.subscribe("test.")
    await h.subscribe("sdexec.proc.")
    await h.service_add("svc")
    hang_seen = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        server = tg.create_task(serve(h, hang_seen))
        pending = tg.create_task(outcome_of(h.rpc("svc.hang", {})))
        await hang_seen.wait()
        print("ready", flush=True)
        report["pending"] = await pending
        start = time.monotonic()
        held = tg.create_task(outcome_of(h.rpc("attr.get", {"name": "version"})))
        await asyncio.sleep(0)  # the request is sent
        held_exec = await asyncio.create_subprocess_exec(
            *CLI, "exec", "-n", "--", "echo", "held", stdout=PIPE, stderr=PIPE
        )
        print("down", flush=True)
        report["held_rpc"] = await held
        out, err = await held_exec.communicate()
        report["held_exec"] = [held_exec.returncode, out.decode(), err.decode()]
        while True:  # connected again (at once, unless the requests were not held)
            try:
                await h.rpc("attr.get", {"name": "version"})
                break
            except SdexecError:
                await asyncio.sleep(0.1)
        report["reconnect_seconds"] = round(time.monotonic() - start, 2)
        await h.rpc("event.pub", {"topic": "test.after", "payload": {"n": 1}})
        ev = await asyncio.wait_for(next_event(h, "test.after"), 10)
        report["event"] = [ev.topic, ev.json()]
        report["service"] = await asyncio.wait_for(h.rpc("svc.echo", {"v": 42}), 10)
        r = await asyncio.to_thread(
            subprocess.run,
            [*CLI, "exec", "-n", "--", "echo", "after"],
            capture_output=True,
        )
        report["exec"] = [r.returncode, r.stdout.decode()]
        ev = await asyncio.wait_for(next_event(h, "sdexec.proc.finished"), 10)
        report["proc_event"] = ev.json()
        server.cancel()
    print(json.dumps(report), flush=True)
    await h.close()


if __name__ == "__main__":
    asyncio.run(main())
