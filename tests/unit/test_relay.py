"""``sdexec relay PATH``: the remote end of ssh://, against a plain UNIX socket server."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[str]:
    """Accepts one client, sends the handshake byte, then echoes until EOF."""
    path = str(tmp_path / "local")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"\0")
            while data := conn.recv(65536):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path
    listener.close()
    t.join(5)


def relay(path: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sdexec.cli.main", "relay", path],
        input=data,
        capture_output=True,
        timeout=30,
    )


def test_relay_passes_bytes_both_ways_untouched_until_the_server_hangs_up(echo_server: str) -> None:
    data = bytes(range(256)) * 1000
    r = relay(echo_server, data)
    assert r.returncode == 0
    assert r.stdout[:1] == b"\0"  # the server's handshake byte, passed through
    assert r.stdout[1:] == data


def test_relay_to_a_missing_socket_sends_enoent_as_the_handshake(tmp_path: Path) -> None:
    r = relay(str(tmp_path / "nothing"), b"")
    assert r.returncode == 1
    assert r.stdout == bytes((errno.ENOENT,))
    assert f"server socket {tmp_path}/nothing was not found" in r.stderr.decode()
