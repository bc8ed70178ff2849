"""Guests are kept apart from the owner (issue 15, item 13).

A real server with ``--allow-guests`` on a real private systemd, and a real
throwaway guest user (secfixtures).  What must hold: a guest that subscribes
to every event sees only its own processes' events; the executable lookup
answers a guest as the guest's own permissions would, so it cannot probe
files it cannot see; a guest's labels cannot block the owner's.  (That
another user's process is answered as one that does not exist is in
test_security_access.py.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server
from faults import assert_no_traceback
from secfixtures import (  # noqa: F401 (fixtures)
    GUEST_PYTHON,
    Guest,
    ServerFactory,
    guest,
    make_server,
    public_dir,
)

# Run as the guest: subscribe to every event, print each one's topic and label.
LISTENER = r"""
import json, socket, sys, time
from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import Message
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
assert s.recv(1) == b"\0"
s.sendall(encode_frame(Message.request("event.subscribe", {"topic": ""}, matchtag=1)))
dec, until = FrameDecoder(), time.monotonic() + float(sys.argv[2])
s.settimeout(0.2)
print("ready", flush=True)
while time.monotonic() < until:
    try:
        data = s.recv(65536)
    except TimeoutError:
        continue
    for m in dec.feed(data):
        if m.topic and m.topic.startswith("sdexec.proc."):
            print(json.dumps([m.topic, (m.json() or {}).get("label")]), flush=True)
"""


@pytest.fixture(scope="module")
def srv(make_server: ServerFactory) -> Iterator[Server]:  # noqa: F811
    server = make_server("guestfaults", "--allow-guests")
    yield server
    assert_no_traceback(server)


def test_a_guest_subscribed_to_everything_sees_only_its_own_events(
    srv: Server,
    guest: Guest,  # noqa: F811
) -> None:
    script = guest.home / "listen.py"
    script.write_text(LISTENER)
    script.chmod(0o644)
    listener = subprocess.Popen(
        guest.argv(GUEST_PYTHON, str(script), srv.socket_path, "4"),
        env=guest.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "ready"
    own = f"owner-{time.monotonic_ns()}"
    mine = f"guests-{time.monotonic_ns()}"
    assert srv.sdexec("exec", "--bg", "--label", own, "--", "true").returncode == 0
    r = guest.sdexec(srv.uri, "exec", "--bg", "--label", mine, "--", "true")
    assert r.returncode == 0, r.stderr
    out, _ = listener.communicate(timeout=30)
    seen = [json.loads(line) for line in out.splitlines()]
    assert ["sdexec.proc.started", mine] in seen
    assert all(label == mine for _, label in seen), seen


def test_a_guest_cannot_probe_files_it_may_not_see(srv: Server, guest: Guest) -> None:  # noqa: F811
    hidden = Path(tempfile.mkdtemp(prefix="sdxh-", dir="/tmp"))  # 0700, root's
    try:
        secret = hidden / "secret"
        secret.write_text("#!/bin/sh\necho secret\n")
        secret.chmod(0o755)
        there = guest.sdexec(srv.uri, "exec", "--", str(secret))
        absent = guest.sdexec(srv.uri, "exec", "--", str(hidden / "absent"))
        assert there.returncode == absent.returncode != 0
        assert there.stderr.replace(b"secret", b"X") == absent.stderr.replace(b"absent", b"X")
        assert b"Permission denied" in there.stderr  # what the guest's own exec would say
        assert srv.sdexec("exec", "--", str(secret)).stdout == b"secret\n"  # the owner may
    finally:
        shutil.rmtree(hidden)


def test_a_guests_label_does_not_block_the_owners(srv: Server, guest: Guest) -> None:  # noqa: F811
    label = f"prolog-{time.monotonic_ns()}"
    r = guest.sdexec(srv.uri, "exec", "--bg", "--label", label, "--", "sleep", "60")
    assert r.returncode == 0, r.stderr
    try:
        r = srv.sdexec("exec", "--bg", "--label", label, "--", "sleep", "60")
        assert r.returncode == 0, r.stderr  # it was EEXIST
        assert guest.sdexec(srv.uri, "kill", "-s", "KILL", label).returncode == 0
        ps = srv.sdexec("ps", "-o", "{label} {state}").stdout.decode()
        assert f"{label} R" in ps  # the guest killed its own, not the owner's
    finally:
        srv.sdexec("kill", "-s", "KILL", label)
