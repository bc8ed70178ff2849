"""Socket activation: reading LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES and picking the socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdexec.base.errors import SdexecError
from sdexec.server.activation import listen_fds, local_socket


def env(pid: int, fds: str, names: str | None = None) -> dict[str, str]:
    e = {"LISTEN_PID": str(pid), "LISTEN_FDS": fds, "OTHER": "kept"}
    if names is not None:
        e["LISTEN_FDNAMES"] = names
    return e


def test_no_variables_no_fds() -> None:
    assert listen_fds({}) == []


def test_fds_for_another_pid_are_ignored_and_unset() -> None:
    e = env(1, "1", "local")
    assert listen_fds(e, pid=2) == []
    assert e == {"OTHER": "kept"}


def test_variables_are_kept_on_request() -> None:
    e = env(1, "0")
    listen_fds(e, pid=1, unset=False)
    assert "LISTEN_FDS" in e


def test_malformed_count_is_refused() -> None:
    with pytest.raises(SdexecError, match="LISTEN_FDS"):
        listen_fds(env(1, "x"), pid=1)


def test_name_count_must_match() -> None:
    with pytest.raises(SdexecError, match="2 names for 1 fds"):
        listen_fds(env(1, "1", "a:b"), pid=1)


@pytest.fixture
def fd3(tmp_path: Path) -> Iterator[Path]:
    """A listening UNIX socket at fd 3, as systemd passes it."""
    path = tmp_path / "local"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    saved = os.dup(3) if _fd_open(3) else None
    os.dup2(sock.fileno(), 3, inheritable=True)
    sock.close()
    try:
        yield path
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        elif _fd_open(3):
            os.close(3)


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_named_fds_are_returned_close_on_exec(fd3: Path) -> None:
    assert listen_fds(env(os.getpid(), "1", "local")) == [(3, "local")]
    assert not os.get_inheritable(3)


def test_unnamed_fd_is_unknown(fd3: Path) -> None:
    assert listen_fds(env(os.getpid(), "1")) == [(3, "unknown")]


def test_local_socket_and_its_path(fd3: Path) -> None:
    found = local_socket([(3, "local")])
    assert found is not None
    sock, path = found
    assert path == str(fd3)
    assert sock.fileno() == 3
    sock.detach()


def test_the_only_unix_stream_socket_is_taken_whatever_its_name(fd3: Path) -> None:
    found = local_socket([(3, "unknown")])
    assert found is not None
    assert found[1] == str(fd3)
    found[0].detach()


def test_no_fds_no_socket() -> None:
    assert local_socket([]) is None
