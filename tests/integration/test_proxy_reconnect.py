"""``sdexec proxy --reconnect``: the server is restarted under a running proxy.

One scenario (``reconnect_client.py`` under the proxy, the server killed
and started again) is run once per module; each test checks one behaviour
of it.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import own_manager, own_server

CLIENT = Path(__file__).with_name("reconnect_client.py")


@dataclass
class Outcome:
    report: dict[str, Any]
    returncode: int
    stderr: str


@pytest.fixture(scope="module")
def outcome(workdir: Path) -> Iterator[Outcome]:
    with own_manager(workdir) as manager, own_server(manager, workdir) as srv:
        p = srv.popen(
            "proxy",
            "--reconnect",
            srv.uri,
            sys.executable,
            str(CLIENT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert p.stdout is not None
        try:
            assert p.stdout.readline() == b"ready\n"
            srv.kill()
            assert p.stdout.readline() == b"down\n"
            srv.start()
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        lines = out.decode().splitlines()
        assert lines, err.decode()
        yield Outcome(json.loads(lines[-1]), p.returncode, err.decode())


def test_in_flight_rpc_gets_econnreset(outcome: Outcome) -> None:
    assert outcome.report["pending"] == errno.ECONNRESET


def test_an_rpc_made_while_the_server_is_down_is_held_and_answered(outcome: Outcome) -> None:
    assert outcome.report["held_rpc"] == "answered"


def test_an_exec_run_while_the_server_is_down_waits_and_runs(outcome: Outcome) -> None:
    assert outcome.report["held_exec"] == [0, "held\n", ""]


def test_proxy_reports_the_loss_and_the_reconnection(outcome: Outcome) -> None:
    assert "lost connection" in outcome.stderr
    assert "reconnected" in outcome.stderr


def test_reconnection_is_retried_every_two_seconds(outcome: Outcome) -> None:
    assert 1.5 <= outcome.report["reconnect_seconds"] < 10


def test_event_subscription_works_after_reconnecting(outcome: Outcome) -> None:
    assert outcome.report["event"] == ["test.after", {"n": 1}]


def test_registered_service_works_after_reconnecting(outcome: Outcome) -> None:
    assert outcome.report["service"] == {"echo": {"v": 42}}


def test_exec_works_after_reconnecting(outcome: Outcome) -> None:
    assert outcome.report["exec"] == [0, "after\n"]


def test_lifecycle_events_reach_the_client_after_reconnecting(outcome: Outcome) -> None:
    event = outcome.report["proc_event"]
    assert event["status"] == 0
    assert event["pid"] > 0


def test_proxy_exits_with_the_clients_status(outcome: Outcome) -> None:
    assert outcome.returncode == 0


HOLD_CLIENT = """
import asyncio, json, sys
from sdexec.base.errors import SdexecError
from sdexec.client.handle import Handle

async def main():
    h = await Handle.connect()
    await h.rpc("attr.get", {"name": "version"})
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the server is down now
    try:
        await h.rpc("attr.get", {"name": "version"})
        print(json.dumps(["answered"]), flush=True)
    except SdexecError as exc:
        print(json.dumps([exc.errno, exc.message]), flush=True)

asyncio.run(main())
"""


def test_a_request_is_held_for_hold_seconds_at_most(workdir: Path) -> None:
    with own_manager(workdir) as manager, own_server(manager, workdir) as srv:
        p = srv.popen(
            "proxy", "--reconnect", "--hold", "1", srv.uri, sys.executable, "-c", HOLD_CLIENT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert p.stdin is not None and p.stdout is not None and p.stderr is not None
        try:
            assert p.stdout.readline() == b"ready\n"
            srv.kill()
            assert p.stderr.readline() == b"sdexec proxy: lost connection to server\n"
            p.stdin.write(b"go\n")
            p.stdin.flush()
            result = json.loads(p.stdout.readline())
            assert p.wait(30) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert result == [errno.ECONNRESET, "connection to server lost, and not back within 1s"]
