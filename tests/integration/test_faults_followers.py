"""Followers (attach, logs --follow) end with their client and are bounded (issue 15, item 11).

A real server follows a chatty background process through journalctl; one
connection asks for 200 followers and goes away.  What must hold: at most
the per-connection bound run, the others get EAGAIN, and every journalctl
ends once the client is gone, not when the followed process ends.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import assert_no_traceback, eventually
from rpc import Raw
from servers import OwnServer, own_manager, own_server

from sdexec.server.followers import MAX_FOLLOWERS

# Lines every 10 ms: never the quiet moment a follower used to wait for.
CHATTY = "while :; do echo x; sleep 0.01; done"


@pytest.fixture(scope="module")
def own(workdir: Path) -> Iterator[OwnServer]:
    with own_manager(workdir) as manager, own_server(manager, workdir) as srv:
        yield srv
        assert_no_traceback(srv)


def journalctls(srv: OwnServer) -> int:
    assert srv.proc is not None
    r = subprocess.run(
        ["ps", "--ppid", str(srv.proc.pid), "-o", "comm="], capture_output=True, text=True
    )
    return r.stdout.split().count("journalctl")


@pytest.mark.parametrize("method", ["sdexec.logs", "sdexec.attach"])
def test_followers_are_bounded_per_connection_and_end_with_their_client(
    own: OwnServer, method: str
) -> None:
    label = "chatty-" + method.split(".")[1]
    assert own.sdexec("exec", "--bg", "--label", label, "--", "sh", "-c", CHATTY).returncode == 0
    raw = Raw(own.socket_path)
    try:
        payload = {"pid": -1, "label": label, "flags": 3, "follow": True}
        tags = [raw.send(method, payload, streaming=True) for _ in range(200)]
        first = [raw.recv(tag) for tag in tags]
        refused = [m for m in first if m.errnum]
        assert len(refused) == 200 - MAX_FOLLOWERS
        assert {m.errnum for m in refused} == {errno.EAGAIN}
        assert eventually(lambda: journalctls(own) >= MAX_FOLLOWERS // 2)
        running = journalctls(own)
        assert running <= MAX_FOLLOWERS
    finally:
        raw.close()
    assert eventually(lambda: journalctls(own) == 0, timeout=10)
    assert own.sdexec("ps", "-o", "{label} {state}").stdout.decode().count(f"{label} R") == 1
    assert own.sdexec("kill", "-s", "9", label).returncode == 0
    print(
        f"\nFIGURE {method} x 200 on one connection: {running} journalctl at most, 0 after it left"
    )
