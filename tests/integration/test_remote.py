"""Remote servers: ``ssh://`` through a real OpenSSH server, ``tcp://`` with CURVE, ``pid:``.

The sshd is the session's (``remote.run_sshd``); the tcp:// server is an
``sdexec serve --listen`` of this module's own with keys made by ``sdexec keygen``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Server
from remote import Sshd, curve_settings, free_port, keygen
from servers import OwnServer, own_manager, own_server

SDEXEC = f"{shlex.quote(sys.executable)} -m sdexec.cli.main"


def ssh_env(server: Server, sshd: Sshd, **extra: str) -> dict[str, str]:
    return server.env(**{**sshd.settings(), **extra})


def test_exec_over_ssh(server: Server, sshd: Sshd) -> None:
    uri = sshd.uri(server.socket_path)
    r = server.sdexec(
        "exec", "--uri", uri, "-n", "--", "echo", "over-ssh", env=ssh_env(server, sshd)
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"over-ssh\n"


def test_exit_status_comes_back_over_ssh(server: Server, sshd: Sshd) -> None:
    uri = sshd.uri(server.socket_path)
    r = server.sdexec(
        "exec", "--uri", uri, "-n", "--", "sh", "-c", "exit 9", env=ssh_env(server, sshd)
    )
    assert r.returncode == 9


def test_proxy_over_ssh(server: Server, sshd: Sshd) -> None:
    uri = sshd.uri(server.socket_path)
    script = f'{SDEXEC} exec -n -- echo proxied-over-ssh; echo "$SDEXEC_URI"'
    r = server.sdexec("proxy", uri, "sh", "-c", script, env=ssh_env(server, sshd))
    assert r.returncode == 0, r.stderr.decode()
    first, local = r.stdout.decode().splitlines()
    assert first == "proxied-over-ssh"
    assert local.startswith("local://")


def test_ssh_to_a_missing_socket_reports_the_path(server: Server, sshd: Sshd) -> None:
    uri = sshd.uri("/nonexistent/sdexec/local")
    r = server.sdexec("ps", "--uri", uri, env=ssh_env(server, sshd))
    assert r.returncode != 0
    assert "server socket /nonexistent/sdexec/local was not found" in r.stderr.decode()


def test_ssh_forwards_the_configured_pythonpath_and_path(server: Server, sshd: Sshd) -> None:
    # A remote "sdexec" that only shows the environment it was given.
    uri = sshd.uri(server.socket_path)
    env = ssh_env(
        server,
        sshd,
        SDEXEC_SSH_RCMD="""sh -c 'echo "remote:$PYTHONPATH:$PATH" >&2' sh""",
        SDEXEC_SSH_PYTHONPATH="/custom/py",
        SDEXEC_SSH_PATH="/custom/bin:/usr/bin:/bin",
    )
    r = server.sdexec("ps", "--uri", uri, env=env)
    assert "remote:/custom/py:/custom/bin:/usr/bin:/bin\n" in r.stderr.decode()


def test_ssh_forwards_the_local_pythonpath_by_default(server: Server, sshd: Sshd) -> None:
    uri = sshd.uri(server.socket_path)
    env = ssh_env(server, sshd, SDEXEC_SSH_RCMD="""sh -c 'echo "remote:$PYTHONPATH" >&2' sh""")
    r = server.sdexec("ps", "--uri", uri, env=env)
    assert f"remote:{env['PYTHONPATH']}\n" in r.stderr.decode()


# --- tcp:// -----------------------------------------------------------------------------


@dataclass
class TcpServer:
    server: OwnServer
    uri: str
    keys: Path

    def env(self, client: str = "client") -> dict[str, str]:
        return self.server.env(**curve_settings(self.keys, client))


@pytest.fixture(scope="module")
def tcp_server(workdir: Path, server: Server) -> Iterator[TcpServer]:
    keys = workdir / "keys"
    authorized = workdir / "authorized"
    authorized.mkdir()
    for name in ("server", "client", "intruder"):
        keygen(keys, name, env=server.env())
    keygen(keys, "guest", "--uid", "4242", env=server.env())
    for name in ("client", "guest"):
        shutil.copy(keys / f"{name}.key", authorized / f"{name}.key")
    uri = f"tcp://127.0.0.1:{free_port()}"
    args = (
        "--listen",
        uri,
        "--curve-key",
        str(keys / "server.key_secret"),
        "--curve-authorized",
        str(authorized),
    )
    with own_manager(workdir) as manager, own_server(manager, workdir, *args) as srv:
        yield TcpServer(srv, uri, keys)


@pytest.fixture
def tcp(tcp_server: TcpServer) -> TcpServer:
    """The module's tcp:// server, started again if a test killed it."""
    tcp_server.server.ensure_running()
    return tcp_server


def test_exec_over_tcp_with_curve(tcp: TcpServer) -> None:
    r = tcp.server.sdexec("exec", "--uri", tcp.uri, "-n", "--", "echo", "over-tcp", env=tcp.env())
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"over-tcp\n"


def test_stdin_travels_over_tcp(tcp: TcpServer) -> None:
    data = os.urandom(300_000).hex().encode()
    r = tcp.server.sdexec("exec", "--uri", tcp.uri, "--", "wc", "-c", input=data, env=tcp.env())
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.strip() == str(len(data)).encode()


def test_unauthorized_key_is_refused(tcp: TcpServer) -> None:
    r = tcp.server.sdexec("ps", "--uri", tcp.uri, env=tcp.env("intruder"))
    assert r.returncode != 0
    assert "not authorized" in r.stderr.decode()


def test_refused_key_is_logged_by_the_server(tcp: TcpServer) -> None:
    tcp.server.sdexec("ps", "--uri", tcp.uri, env=tcp.env("intruder"))
    assert "auth failure" in tcp.server.log_text()


def test_key_maps_to_its_configured_uid_not_the_owner(tcp: TcpServer) -> None:
    # The guest key stands for uid 4242, which this server does not accept.
    r = tcp.server.sdexec("ps", "--uri", tcp.uri, env=tcp.env("guest"))
    assert "server refused the connection: Operation not permitted" in r.stderr.decode()
    assert '"uid": 4242' in tcp.server.log_text()


def test_proxy_over_tcp(tcp: TcpServer) -> None:
    script = f"{SDEXEC} exec -n -- echo proxied-over-tcp"
    r = tcp.server.sdexec("proxy", tcp.uri, "sh", "-c", script, env=tcp.env())
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"proxied-over-tcp\n"


def test_server_killed_under_a_tcp_proxy_hangs_up(tcp: TcpServer) -> None:
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sdexec.cli.main",
            "proxy",
            tcp.uri,
            "sh",
            "-c",
            "echo ready; exec sleep 60",
        ],
        env=tcp.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    tcp.server.kill()
    _, err = p.communicate(timeout=30)
    assert p.returncode == 129, err.decode()
    assert b"lost connection" in err


# --- pid: ---------------------------------------------------------------------------------


def test_uri_resolves_pid_to_the_processes_server(server: Server) -> None:
    with subprocess.Popen(
        ["sh", "-c", "echo up; exec sleep 30"], env=server.env(), stdout=subprocess.PIPE
    ) as p:
        assert p.stdout is not None
        p.stdout.readline()
        try:
            r = server.sdexec("uri", f"pid:{p.pid}")
        finally:
            p.kill()
    assert r.returncode == 0
    assert r.stdout.decode().strip() == server.uri


def test_commands_accept_pid_targets(server: Server) -> None:
    script = f'{SDEXEC} exec --uri "pid:$$" -n -- echo via-pid'
    r = server.sdexec("proxy", server.uri, "sh", "-c", script)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"via-pid\n"


def test_uri_of_an_unknown_scheme_is_an_error(server: Server) -> None:
    r = server.sdexec("uri", "nosuch:thing")
    assert r.returncode == 1
    assert r.stderr.decode() == "sdexec: Unable to resolve nosuch:thing to a URI\n"
