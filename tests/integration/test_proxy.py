"""``sdexec proxy`` end to end against a real server (flux-proxy(1) behaviours)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import Server
from faults import log_mark, log_since

SDEXEC = f"{shlex.quote(sys.executable)} -m sdexec.cli.main"


def proxy(server: Server, *args: str, script: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``sdexec proxy [ARGS] URI sh -c SCRIPT``; (status, stdout, stderr)."""
    r = server.sdexec("proxy", *args, server.uri, "sh", "-c", script, timeout=timeout)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_child_sees_its_own_sdexec_uri(server: Server) -> None:
    rc, out, _ = proxy(server, script='echo "$SDEXEC_URI"')
    assert rc == 0
    uri = out.strip()
    assert uri.startswith("local://") and uri.endswith("/local")
    assert uri != server.uri


def test_flux_uri_is_set_too(server: Server) -> None:
    rc, out, _ = proxy(server, script='echo "$FLUX_URI $SDEXEC_URI"')
    flux, ours = out.split()
    assert rc == 0 and flux == ours


def test_exec_works_through_the_proxy(server: Server) -> None:
    rc, out, err = proxy(server, script=f"{SDEXEC} exec -n -- echo hello-through-proxy")
    assert rc == 0, err
    assert out == "hello-through-proxy\n"


def test_socket_directory_is_private_and_removed_afterwards(server: Server) -> None:
    script = 'p=${SDEXEC_URI#local://}; stat -c "%a %U" "$(dirname "$p")"; echo "$p"'
    rc, out, _ = proxy(server, script=script)
    mode_owner, path = out.splitlines()
    assert rc == 0
    assert mode_owner == "700 root"
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.dirname(path))


def test_socket_directory_is_under_tmpdir(server: Server, tmp_path: Path) -> None:
    r = server.sdexec(
        "proxy", server.uri, "sh", "-c", 'echo "$SDEXEC_URI"', env=server.env(TMPDIR=str(tmp_path))
    )
    assert r.stdout.decode().startswith(f"local://{tmp_path}/sdexec-proxy-")


def test_missing_tmpdir_falls_back_to_tmp(server: Server) -> None:
    r = server.sdexec(
        "proxy", server.uri, "sh", "-c", 'echo "$SDEXEC_URI"', env=server.env(TMPDIR="/nonexistent")
    )
    assert r.stdout.decode().startswith("local:///tmp/sdexec-proxy-")


def test_exit_codes_of_the_child_are_the_proxys(server: Server) -> None:
    for code in (0, 1, 7):
        rc, _, _ = proxy(server, script=f"exit {code}")
        assert rc == code


def test_a_child_killed_by_a_signal_gives_128_plus_signal(server: Server) -> None:
    rc, _, _ = proxy(server, script="kill -TERM $$")
    assert rc == 128 + 15


def test_shell_is_spawned_without_a_command(server: Server) -> None:
    r = server.sdexec(
        "proxy", server.uri, input=b'echo "shell:$SDEXEC_URI"\n', env=server.env(SHELL="/bin/sh")
    )
    assert r.returncode == 0
    assert r.stdout.decode().startswith("shell:local://")


def test_proxy_of_a_proxy(server: Server) -> None:
    nested = f'{SDEXEC} exec -n -- echo nested; echo "$SDEXEC_URI"'
    inner = f'{SDEXEC} proxy "$SDEXEC_URI" sh -c {shlex.quote(nested)}'
    rc, out, err = proxy(server, script=f'echo "$SDEXEC_URI"; {inner}')
    assert rc == 0, err
    outer_uri, nested, inner_uri = out.splitlines()
    assert nested == "nested"
    assert inner_uri != outer_uri


def test_unresolvable_target_is_an_error(server: Server) -> None:
    r = server.sdexec("proxy", "bogus:thing", "true")
    assert r.returncode == 125
    assert "Unable to resolve bogus:thing to a URI" in r.stderr.decode()


def test_missing_server_socket_is_an_error(server: Server, tmp_path: Path) -> None:
    r = server.sdexec("proxy", f"local://{tmp_path}/nothing", "true")
    assert r.returncode == 125
    assert f"server socket {tmp_path}/nothing was not found" in r.stderr.decode()


def test_a_client_leaving_the_proxy_has_its_foreground_process_stopped(server: Server) -> None:
    # The proxy stays connected, so only its sdexec.disconnect tells the server.
    script = f"""
{SDEXEC} exec -n --label pxdisc -- sleep 60 & c=$!
for i in $(seq 100); do {SDEXEC} ps -n -o '{{label}}' | grep -q pxdisc && break; sleep 0.05; done
kill -9 $c; wait $c
for i in $(seq 100); do
    {SDEXEC} ps -n -o '{{label}}' | grep -q pxdisc || {{ echo gone; exit 0; }}
    sleep 0.05
done
echo still-running
"""
    _, out, err = proxy(server, script=script)
    assert out.strip() == "gone", err


def test_a_command_that_cannot_run_is_an_error(server: Server, tmp_path: Path) -> None:
    r = server.sdexec(
        "proxy", server.uri, "/nonexistent/command", env=server.env(TMPDIR=str(tmp_path))
    )
    assert r.returncode == 127
    assert "cannot run /nonexistent/command" in r.stderr.decode()
    assert list(tmp_path.iterdir()) == []  # the socket directory is gone too


def test_exit_status_survives_an_inherited_ignored_sigchld(server: Server) -> None:
    # Started with SIGCHLD ignored, a process's children are reaped by the kernel.
    code = (
        "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
        "os.execv(sys.executable, [sys.executable, '-m', 'sdexec.cli.main', 'proxy', "
        f"{server.uri!r}, 'sh', '-c', 'exit 7'])"
    )
    r = subprocess.run([sys.executable, "-c", code], env=server.env(), timeout=60)
    assert r.returncode == 7


def test_a_client_leaving_the_proxy_is_no_unknown_method_in_the_servers_log(
    server: Server,
) -> None:
    """The proxy tells every service a client used that it left (attr, sdexec):
    the server takes ``attr.disconnect`` as nothing to clean up, not as an error."""
    mark = log_mark(server)
    rc, out, err = proxy(server, script=f"{SDEXEC} exec -n -- echo x && {SDEXEC} ps")
    assert rc == 0, err
    assert out.startswith("x\n")
    text = log_since(server, mark)
    assert "Unknown method" not in text and "request refused" not in text
