"""Resource exhaustion: floods of connections never lock the owner out (issue 15, item 9).

Real servers on a real private systemd; connections are raw ``local://``
sockets (the handshake byte is the admission's answer), opened by the test
itself for the owner and, for guests, by small programs run under other
uids with ``setpriv`` (SO_PEERCRED then reports those uids).  No test may
leave a traceback in the server's log.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import assert_no_traceback
from rpc import Raw
from secfixtures import public_dir  # noqa: F401 - a fixture
from servers import OwnServer, own_manager

from sdexec.systemd.private import PrivateManager

GUEST_UIDS = [61001, 61002, 61003, 61004]

# Run as a guest: open N connections, report the handshake bytes, hold them.
HOLDER = r"""
import json, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
held, codes = [], {}
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    b = s.recv(1)
    code = b[0] if b else -1
    codes[code] = codes.get(code, 0) + 1
    (held.append(s) if code == 0 else s.close())
print(json.dumps(codes), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def own_mgr(workdir: Path) -> Iterator[PrivateManager]:
    with own_manager(workdir) as manager:
        yield manager


_n = iter(range(1000))


@contextlib.contextmanager
def server(
    manager: PrivateManager, where: Path, *args: str, **popen: object
) -> Iterator[OwnServer]:
    n = next(_n)
    srv = OwnServer(
        manager, str(where / f"lim{n}"), manager.state_dir, where / f"lim{n}.log",
        extra_args=list(args),
    )  # fmt: skip
    srv.start(**popen)
    try:
        yield srv
    finally:
        if srv.proc is not None:
            srv.kill()
        for unit in srv.units():
            srv.systemctl("stop", unit)
        srv.systemctl("reset-failed")
        assert_no_traceback(srv)


def hold(path: str, n: int) -> tuple[list[socket.socket], dict[int, int]]:
    """Open ``n`` connections as this (the owner's) uid; keep the admitted ones."""
    held: list[socket.socket] = []
    codes: dict[int, int] = {}
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        b = s.recv(1)
        code = b[0] if b else -1
        codes[code] = codes.get(code, 0) + 1
        if code == 0:
            held.append(s)
        else:
            s.close()
    return held, codes


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def ps_works(srv: OwnServer) -> bool:
    r = srv.sdexec("ps", timeout=30)
    assert r.returncode == 0, r.stderr
    return True


def test_idle_connections_of_the_owner_do_not_lock_it_out(
    own_mgr: PrivateManager, workdir: Path
) -> None:
    with server(own_mgr, workdir) as srv:
        held, codes = hold(srv.socket_path, 200)
        try:
            assert codes == {0: 200}  # no per-uid cap for the owner
            assert ps_works(srv)
        finally:
            close_all(held)


def test_guests_cannot_take_the_room_kept_for_the_owner(
    own_mgr: PrivateManager,
    public_dir: Path,  # noqa: F811
) -> None:
    with server(own_mgr, public_dir, "--allow-guests", "--max-connections", "512") as srv:
        holders = [
            subprocess.Popen(
                [
                    "setpriv",
                    f"--reuid={uid}",
                    f"--regid={uid}",
                    "--clear-groups",
                    "--",
                    "/usr/bin/python3",
                    "-I",
                    "-c",
                    HOLDER,
                    srv.socket_path,
                    "128",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for uid in GUEST_UIDS
        ]
        try:
            results = [json.loads(h.stdout.readline()) for h in holders if h.stdout]
            admitted = sum(r.get("0", 0) for r in results)
            assert admitted == 512 - 64  # all but the owner's reserve
            assert ps_works(srv)
            held, codes = hold(srv.socket_path, 60)
            close_all(held)
            assert codes == {0: 60}
            text = srv.log_text()
            refusals = text.count('"connection refused"')
            assert 0 < refusals <= 2 * len(GUEST_UIDS)  # 64 refused, a few lines
            print(
                f"\nFIGURE 4 guests x 128: {admitted} admitted, {refusals} log lines for 64 refused"
            )
        finally:
            for h in holders:
                h.communicate(timeout=30)


def test_a_full_table_closes_an_idle_connection_for_the_owner(
    own_mgr: PrivateManager, workdir: Path
) -> None:
    with server(own_mgr, workdir, "--max-connections", "64") as srv:
        r = srv.sdexec("exec", "--bg", "--waitable", "--label", "long", "--", "sleep", "300")
        assert r.returncode == 0
        busy = Raw(srv.socket_path)  # a request in flight: never idle
        wait_tag = busy.send("sdexec.wait", {"pid": -1, "label": "long"})
        held, codes = hold(srv.socket_path, 80)
        try:
            assert codes == {0: 80}  # each past the 63rd closed an idle one
            for _ in range(5):
                assert ps_works(srv)
            assert srv.sdexec("kill", "-s", "9", "long").returncode == 0
            assert busy.recv(wait_tag).json()["status"] == 9
            assert "idle connection closed to make room" in srv.log_text()
        finally:
            close_all(held)
            busy.close()


def test_200_attach_streams_of_the_owner_are_all_admitted(
    own_mgr: PrivateManager, workdir: Path
) -> None:
    with server(own_mgr, workdir) as srv:
        r = srv.sdexec("exec", "--bg", "--label", "watched", "--", "sleep", "300")
        assert r.returncode == 0
        clients = []
        try:
            for _ in range(200):
                c = Raw(srv.socket_path)
                # Followers (sdexec attach): an RFC 42 attach is one at a time.
                payload = {"pid": -1, "label": "watched", "flags": 3, "follow": True}
                clients.append((c, c.send("sdexec.attach", payload, streaming=True)))
            assert all(c.recv(tag).json()["type"] == "attached" for c, tag in clients)
        finally:
            for c, _ in clients:
                c.close()
            srv.sdexec("kill", "-s", "9", "watched")


def test_the_descriptor_limit_is_raised_to_the_hard_limit(
    own_mgr: PrivateManager, workdir: Path
) -> None:
    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 8192))

    with server(own_mgr, workdir, preexec_fn=low) as srv:
        assert srv.proc is not None
        limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["8192", "8192"], line
