"""Who may connect and what a guest may touch, with a real throwaway user; floods.

Every command runs through the real CLI or a raw client, against real
``sdexec serve`` processes on the session's private systemd manager.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server
from secfixtures import (  # noqa: F401 (fixtures)
    GUEST_PYTHON,
    Guest,
    ServerFactory,
    guest,
    make_server,
    public_dir,
)

from sdexec.client.blocking import BlockingHandle
from sdexec.proto.framing import encode_frame
from sdexec.proto.message import Message

HANDSHAKE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
print(s.recv(1)[0])
"""

FLOOD = """
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
held, codes = [], {}
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        b = s.recv(1)
    except OSError as exc:
        codes["connect-" + str(exc.errno)] = codes.get("connect-" + str(exc.errno), 0) + 1
        s.close()
        continue
    code = b[0] if b else -1
    codes[code] = codes.get(code, 0) + 1
    if code == 0:
        held.append(s)
    else:
        s.close()
print(codes, flush=True)
sys.stdin.read()  # hold the connections until told to stop
"""


@pytest.fixture(scope="module")
def default_server(make_server: ServerFactory) -> Server:  # noqa: F811
    return make_server("default")


@pytest.fixture(scope="module")
def guest_server(make_server: ServerFactory) -> Server:  # noqa: F811
    return make_server(
        "guests",
        "--allow-guests",
        "--max-connections",
        "64",
        "--max-connections-per-uid",
        "16",
        "--max-output-buffer",
        str(2 << 20),
    )


def write_script(guest: Guest, name: str, text: str) -> str:  # noqa: F811
    path = guest.home / name
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def fd_count(srv: Server) -> int:
    assert srv.proc is not None
    return len(os.listdir(f"/proc/{srv.proc.pid}/fd"))


def rss_kib(srv: Server) -> int:
    assert srv.proc is not None
    for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- who may connect ---------------------------------------------------------------------


def test_default_socket_is_0600_in_a_0700_directory(default_server: Server) -> None:
    path = Path(default_server.socket_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_socket_is_0666_in_a_0755_directory_when_guests_are_allowed(guest_server: Server) -> None:
    path = Path(guest_server.socket_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755


def test_guest_gets_eperm_at_the_handshake_of_a_default_server(
    default_server: Server,
    guest: Guest,  # noqa: F811
) -> None:
    # Loosen the file permissions as a careless admin might: the handshake still refuses.
    path = Path(default_server.socket_path)
    path.parent.chmod(0o755)
    path.chmod(0o666)
    try:
        script = write_script(guest, "handshake.py", HANDSHAKE)
        r = guest.run(GUEST_PYTHON, script, str(path))
    finally:
        path.chmod(0o600)
        path.parent.chmod(0o700)
    assert (r.returncode, r.stdout.strip()) == (0, str(errno.EPERM).encode())


def test_guest_cli_reports_the_refusal(default_server: Server, guest: Guest) -> None:  # noqa: F811
    path = Path(default_server.socket_path)
    path.parent.chmod(0o755)
    path.chmod(0o666)
    try:
        r = guest.sdexec(default_server.uri, "ps")
    finally:
        path.chmod(0o600)
        path.parent.chmod(0o700)
    assert r.returncode == 1
    assert b"server refused the connection: Operation not permitted" in r.stderr


def test_owner_is_served_by_a_default_server(default_server: Server) -> None:
    assert default_server.sdexec("exec", "--", "true").returncode == 0


# --- what a guest may touch ----------------------------------------------------------------


@pytest.fixture
def root_job(guest_server: Server) -> Iterator[str]:
    label = f"root-{time.monotonic_ns()}"
    r = guest_server.sdexec("exec", "--bg", "--label", label, "--", "sleep", "60")
    assert r.returncode == 0, r.stderr
    yield label
    guest_server.sdexec("kill", "-s", "KILL", label)


@pytest.fixture
def guest_job(guest_server: Server, guest: Guest) -> Iterator[str]:  # noqa: F811
    label = f"guest-{time.monotonic_ns()}"
    r = guest.sdexec(guest_server.uri, "exec", "--bg", "--label", label, "--", "sleep", "60")
    assert r.returncode == 0, r.stderr
    yield label
    guest_server.sdexec("kill", "-s", "KILL", label)


def test_guest_command_runs_as_the_guest(guest_server: Server, guest: Guest) -> None:  # noqa: F811
    r = guest.sdexec(guest_server.uri, "exec", "--", "id", "-u")
    assert (r.returncode, r.stdout) == (0, f"{guest.uid}\n".encode()), r.stderr


def test_owner_command_runs_as_the_server(guest_server: Server) -> None:
    r = guest_server.sdexec("exec", "--", "id", "-u")
    assert (r.returncode, r.stdout) == (0, f"{os.getuid()}\n".encode())


def test_guest_lists_only_its_own_processes(
    guest_server: Server,
    guest: Guest,  # noqa: F811
    root_job: str,
    guest_job: str,
) -> None:
    r = guest.sdexec(guest_server.uri, "ps", "-n", "-o", "{label}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == [guest_job]


def test_owner_lists_every_process(guest_server: Server, root_job: str, guest_job: str) -> None:
    r = guest_server.sdexec("ps", "-n", "-o", "{label}")
    assert {root_job, guest_job} <= set(r.stdout.decode().split())


def _as_if_absent(
    r: subprocess.CompletedProcess[bytes], absent: subprocess.CompletedProcess[bytes], label: str
) -> None:
    """A guest's answer about another user's process is the one for no process at all."""
    assert r.returncode == absent.returncode != 0
    assert r.stderr.replace(label.encode(), b"L") == absent.stderr.replace(b"no-such-job", b"L")


@pytest.mark.parametrize("command", ["kill", "wait", "attach", "logs"])
def test_another_users_process_is_answered_as_one_that_does_not_exist(
    guest_server: Server,
    guest: Guest,  # noqa: F811
    root_job: str,
    command: str,
) -> None:
    """sdexec.security: EPERM against ENOENT told a guest which of the owner's labels exist."""
    r = guest.sdexec(guest_server.uri, command, root_job)
    absent = guest.sdexec(guest_server.uri, command, "no-such-job")
    _as_if_absent(r, absent, root_job)
    assert b"does not belong to any subprocess" in r.stderr


def test_guest_may_kill_its_own_process(
    guest_server: Server,
    guest: Guest,  # noqa: F811
    guest_job: str,
) -> None:
    assert guest.sdexec(guest_server.uri, "kill", guest_job).returncode == 0


def test_guest_may_not_set_privileged_unit_properties(
    guest_server: Server,
    guest: Guest,  # noqa: F811
) -> None:
    r = guest.sdexec(guest_server.uri, "exec", "-p", "StandardOutput=file:/etc/x", "--", "true")
    assert r.returncode == 126
    assert b"guests may not set the option SDEXEC_PROP_StandardOutput" in r.stderr


def test_guest_may_set_resource_limits(guest_server: Server, guest: Guest) -> None:  # noqa: F811
    r = guest.sdexec(guest_server.uri, "exec", "-p", "MemoryMax=1G", "--", "true")
    assert r.returncode == 0, r.stderr


# --- floods ---------------------------------------------------------------------------------


def test_connection_flood_from_a_guest_is_capped_and_others_are_served(
    guest_server: Server,
    guest: Guest,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = fd_count(guest_server)
    script = write_script(guest, "flood.py", FLOOD)
    proc = subprocess.Popen(  # the flood runs as the guest
        guest.argv(GUEST_PYTHON, script, guest_server.socket_path, "1000"),
        env=guest.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        codes = eval(proc.stdout.readline().decode())  # the script prints a dict literal
        during = fd_count(guest_server)
        start = time.monotonic()
        r = guest_server.sdexec("ps")
        latency = time.monotonic() - start
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    with capsys.disabled():
        print(f"\nflood: {codes}; server fds {before} -> {during}; ps took {latency:.2f}s")
    assert codes == {0: 16, errno.EAGAIN: 984}
    assert during - before <= 16 + 4
    assert r.returncode == 0


def test_a_client_that_never_reads_cannot_grow_the_server_and_others_are_served(
    guest_server: Server,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = rss_kib(guest_server)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(guest_server.socket_path)
    assert sock.recv(1) == b"\0"
    sock.setblocking(False)
    request = encode_frame(Message.request("sdexec.list", {}, matchtag=1))
    batch = request * 256
    sent = 0
    stalled_since: float | None = None
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            try:
                n = sock.send(batch)
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 1.0:
                    break  # the server stopped reading from us
                time.sleep(0.01)
                continue
            stalled_since = None
            sent += n
        grown = rss_kib(guest_server) - base
        start = time.monotonic()
        with BlockingHandle.connect(guest_server.uri) as other:
            answer = other.rpc("sdexec.list", {})
        latency = time.monotonic() - start
    finally:
        sock.close()
    requests = sent // len(request)
    with capsys.disabled():
        print(
            f"\nnever-reading client: {requests} requests sent before the server stopped reading; "
            f"server RSS +{grown} KiB; another client's list took {latency * 1000:.0f} ms"
        )
    assert stalled_since is not None, "the server kept reading from a client that never reads"
    assert grown < 64 * 1024
    assert "procs" in answer
    assert latency < 5


def test_oversized_message_closes_only_that_connection(guest_server: Server) -> None:
    import struct
    import sys

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(guest_server.socket_path)
    assert sock.recv(1) == b"\0"
    magic = struct.pack("=I" if sys.byteorder == "little" else ">I", 0xFFEE0012)
    sock.sendall(magic + struct.pack(">I", (4 << 20) + 1))
    sock.settimeout(10)
    try:
        closed = sock.recv(1) == b""
    finally:
        sock.close()
    assert closed
    assert "exceeds the limit" in guest_server.log_text()
    assert guest_server.sdexec("ps").returncode == 0


def test_server_whose_owner_cannot_be_resolved_requires_signatures(
    make_server: ServerFactory,  # noqa: F811
) -> None:
    srv = make_server("unknown-owner", "--owner", "no-such-user-sdexec")
    unsigned = srv.sdexec("ps", "--no-sign")
    signed = srv.sdexec("ps", "--sign", "--sign-mechanism", "none")
    assert (unsigned.returncode, signed.returncode) == (1, 0), signed.stderr
    assert b"this server requires signed requests" in unsigned.stderr
