"""``sdexec serve`` refuses to start where it cannot, with one line, touching nothing.

A second server on the socket (or state directory) of a running one leaves
the first, its private manager and its units alone; a busy tcp:// port or a
socket path that cannot exist is one line on stderr, never a traceback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, Server, wait_for_socket
from faults import assert_no_traceback, eventually
from remote import free_port, keygen
from servers import OwnServer, own_manager, own_server

from sdexec.systemd.private import PrivateManager


@pytest.fixture(scope="module")
def own_mgr(workdir: Path) -> Iterator[PrivateManager]:
    with own_manager(workdir) as manager:
        yield manager


@pytest.fixture
def own(own_mgr: PrivateManager, workdir: Path) -> Iterator[OwnServer]:
    with own_server(own_mgr, workdir) as srv:
        yield srv
        assert_no_traceback(srv)


def serve(srv: Server, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Another ``sdexec serve`` run in the foreground (it is expected to refuse at once)."""
    return subprocess.run(
        [sys.executable, "-m", "sdexec.cli.main", "serve", "--systemd", "private", *args],
        capture_output=True,
        timeout=60,
        env={**srv.env(), "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
    )


def one_line(r: subprocess.CompletedProcess[bytes], text: str) -> None:
    """Refused: exit 1 and exactly one line on stderr, which says ``text``."""
    assert r.returncode == 1, r.stderr
    assert r.stderr.decode().splitlines() == [f"sdexec: serve: {text}"]
    assert b"Traceback" not in r.stdout + r.stderr


def test_a_second_server_on_the_same_socket_refuses_and_leaves_the_first_alone(
    own: OwnServer,
) -> None:
    r = own.sdexec("exec", "--bg", "--label", "stays", "--", "sleep", "300")
    assert r.returncode == 0, r.stderr
    manager_pid = own.manager.pid()
    second = serve(own, "--uri", own.uri, "--state-dir", str(own.state_dir))
    one_line(second, f"another server is listening on {own.socket_path}")
    assert b"re-adopted" not in second.stdout + second.stderr
    assert own.manager.pid() == manager_pid
    ps = own.sdexec("ps")
    assert ps.returncode == 0 and b"stays" in ps.stdout
    assert own.proc is not None and own.proc.poll() is None
    assert own.sdexec("kill", "-s", "KILL", "stays").returncode == 0


def test_a_second_server_on_the_same_state_directory_refuses(own: OwnServer, workdir: Path) -> None:
    second = serve(own, "--uri", f"local://{workdir}/other.sock", "--state-dir", str(own.state_dir))
    assert own.proc is not None
    one_line(
        second, f"another server (pid {own.proc.pid}) uses the state directory {own.state_dir}"
    )
    assert own.sdexec("ps").returncode == 0


def test_a_tcp_port_in_use_is_one_line(own: OwnServer, workdir: Path) -> None:
    keys = workdir / "serve-keys"
    keygen(keys, "server", env=own.env())
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        r = serve(
            own,
            "--uri", f"local://{workdir}/tcpbusy.sock",
            "--state-dir", str(workdir / "tcpbusy-state"),
            "--listen", f"tcp://127.0.0.1:{port}",
            "--curve-key", str(keys / "server.key_secret"),
            "--curve-authorized", str(keys),
        )  # fmt: skip
    one_line(r, f"cannot listen on tcp://127.0.0.1:{port}: Address already in use")


def test_a_socket_path_that_cannot_exist_is_one_line(own: OwnServer, workdir: Path) -> None:
    r = serve(own, "--uri", "local:///proc/nope/local", "--state-dir", str(workdir / "nope"))
    one_line(r, "cannot make the socket's directory /proc/nope: No such file or directory")


def test_the_first_server_still_stops_cleanly(own: OwnServer) -> None:
    serve(own, "--uri", own.uri, "--state-dir", str(own.state_dir))
    assert own.stop(signal.SIGTERM) == 0


def test_a_second_server_leaves_the_first_servers_own_manager_running(workdir: Path) -> None:
    """As an operator runs it: the first server starts its own private manager
    (default state directory), with no background job and then with one; the
    same command again refuses each time, and the first keeps serving."""
    sock = workdir / "twice" / "local"
    state = Path(f"{sock}.state")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDEXEC_", "XDG_", "DBUS_"))}
    env["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "sdexec.cli.main", "serve", "--uri", f"local://{sock}"]
    cli = [sys.executable, "-m", "sdexec.cli.main"]

    def client(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*cli, *args],
            capture_output=True,
            timeout=60,
            env={**env, "SDEXEC_URI": f"local://{sock}"},
            stdin=subprocess.DEVNULL,
        )

    def second() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*argv, "--systemd", "private"], capture_output=True, timeout=60, env=env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    manager = PrivateManager(state)
    with open(workdir / "twice.log", "wb") as log:
        first = subprocess.Popen(
            [*argv, "--systemd", "private"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env=env,
        )  # fmt: skip
    try:
        wait_for_socket(str(sock), first)
        manager_pid = manager.pid()
        assert manager_pid is not None

        one_line(second(), f"another server is listening on {sock}")
        assert first.poll() is None and manager.pid() == manager_pid
        r = client("exec", "--", "echo", "still")
        assert (r.returncode, r.stdout) == (0, b"still\n"), r.stderr

        assert client("exec", "--bg", "--label", "kept", "--", "sleep", "300").returncode == 0
        again = second()
        one_line(again, f"another server is listening on {sock}")
        assert b"adopt" not in again.stdout + again.stderr
        assert first.poll() is None and manager.pid() == manager_pid
        ps = client("ps", "-o", "{label} {state}")
        assert (ps.returncode, ps.stdout) == (0, b"LABEL STATE\nkept R\n"), ps.stderr
        assert client("kill", "-s", "KILL", "kept").returncode == 0
        # A kill is delivered, not waited for: the process is gone a little later.
        assert eventually(lambda: b"kept" not in client("ps", "-o", "{label}").stdout)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)
        rc = first.wait(60)
        left = manager.pid() is not None
        if left:  # a failed test: what it left (its background job) keeps the manager
            manager.stop()
    assert rc == 0 and not left
    assert manager.pid() is None and not manager.slice.exists()
    log_text = (workdir / "twice.log").read_text(errors="replace")
    assert "Traceback" not in log_text
