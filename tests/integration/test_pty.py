"""``sdexec exec --pty``: a real terminal (tmux) on the client, a pty on the server.

Each test types into a tmux pane running a plain ``sh``, as a person would,
and reads the pane back.  The CLI runs against the session's server
(local://) or, in the ssh:// test, through the session's sshd.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TCP_RANK, Cluster, Server
from remote import Sshd
from rpc import Raw, exec_payload, exec_stream
from terminal import Tmux, tmux

SDEXEC_ARGV = [sys.executable, "-m", "sdexec.cli.main"]
SDEXEC = shlex.join(SDEXEC_ARGV)


@pytest.fixture
def term(server: Server, tmp_path: Path) -> Iterator[Tmux]:
    with tmux(tmp_path, server.env()) as t:
        yield t


def run_line(cmd: str) -> str:
    """A shell line that runs ``cmd`` and then shows its exit status."""
    return f"{cmd}; echo rc=$?"


def test_tty_is_a_pts_device(term: Tmux) -> None:
    term.type(run_line(f"{SDEXEC} exec -t -- tty"))
    m = term.wait_text(r"(/dev/pts/\d+)\s+rc=(\d+)")
    assert m[2] == "0"


def test_exit_code_is_the_remote_programs(term: Tmux) -> None:
    term.type(run_line(f"{SDEXEC} exec --pty -- sh -c 'exit 7'"))
    term.wait_text(r"rc=7\b")


def test_term_is_passed_through(term: Tmux) -> None:
    term.type(run_line(f"TERM=vt220 {SDEXEC} exec -t -- sh -c 'echo term=$TERM'"))
    term.wait_text(r"term=vt220\s+rc=0")


def test_stty_size_matches_the_pane_and_follows_resize_pane(term: Tmux) -> None:
    term.split()
    cols, rows = term.pane_size()
    term.type(f"{SDEXEC} exec -t -- bash --norc --noprofile -i")
    term.wait_text(r"bash-[\d.]+#")
    term.type("PS1='R# '; stty size")
    term.wait_text(rf"\n{rows} {cols}\s+R#")
    new_cols, new_rows = term.resized(cols - 11)
    assert new_cols == cols - 11
    term.type("clear; stty size")
    term.wait_text(rf"{new_rows} {new_cols}\s+R#")
    term.type("exit 0")
    term.wait_text(r"\n\$\s*$")


def test_less_draws_and_quits(term: Tmux, tmp_path: Path) -> None:
    text = tmp_path / "pages.txt"
    text.write_text("".join(f"line {i}\n" for i in range(1, 500)))
    term.type(run_line(f"{SDEXEC} exec -t -- less {text}"))
    screen = term.wait_text(r"line 1\n")
    lines = term.lines()
    _, rows = term.pane_size()
    assert lines[rows - 2] == f"line {rows - 1}"  # a full screen, the prompt below it
    term.keys("q")
    screen = term.wait_text(r"rc=0")
    assert "line 1" not in screen.string  # less restored the screen it found


def test_vi_draws_and_quits(term: Tmux, tmp_path: Path) -> None:
    target = tmp_path / "edited.txt"
    term.type(run_line(f"{SDEXEC} exec -t -- vi {target}"))
    term.wait_text(r"~\n~\n")  # vi's empty-buffer tildes
    term.keys("i", "written in vi", "Escape")
    term.type(":wq")
    term.wait_text(r"rc=0")
    assert target.read_text() == "written in vi\n"


def test_ctrl_z_suspends_and_fg_resumes_in_bash(term: Tmux) -> None:
    term.type(run_line(f"{SDEXEC} exec -t -- bash --norc --noprofile -i"))
    term.wait_text(r"bash-[\d.]+#")
    term.type("PS1='R# '; sh -c 'sleep 300; echo slept'")
    term.wait_text(r"sleep 300; echo slept'\n")
    term.keys("C-z")
    term.wait_text(r"Stopped\s+sh -c .sleep 300")
    term.type("jobs -l")
    term.wait_text(r"\[1\]\+ +\d+ Stopped")
    term.type("fg")
    term.wait_text(r"R# fg\nsh -c 'sleep 300; echo slept'\s*$")
    term.keys("C-c")
    term.wait_text(r"\^C\s*R#\s*$")
    term.type("exit 3")
    term.wait_text(r"rc=3")


def test_ctrl_c_interrupts_sleep(term: Tmux) -> None:
    term.type(run_line(f"{SDEXEC} exec -t -- sh -c 'echo ready; exec sleep 300'"))
    term.wait_text(r"\nready")  # the remote terminal has it from here on
    term.keys("C-c")
    term.wait_text(r"rc=130\b")


def test_ctrl_backslash_quits(term: Tmux) -> None:
    term.type(run_line(f"{SDEXEC} exec -t -- sh -c 'echo ready; exec sleep 300'"))
    term.wait_text(r"\nready")
    term.keys("C-\\")
    term.wait_text(r"rc=131\b")  # SIGQUIT, dumped or not


def _stty_flags(term: Tmux) -> set[str]:
    term.clear()
    term.type("stty -a | tr ' ' '\\n' | grep -x -E -e '-?(icanon|echo|isig|opost|ixon)'")
    screen = term.wait_for(lambda s: s.count("$") >= 2)
    return {
        w for w in screen.split() if w.strip("-") in {"icanon", "echo", "isig", "opost", "ixon"}
    }


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_terminal_is_sane_after_the_client_is_killed(
    term: Tmux, server: Server, signum: int
) -> None:
    sane = _stty_flags(term)
    assert sane == {"icanon", "echo", "isig", "opost", "ixon"}
    term.clear()
    term.type(run_line(f"{SDEXEC} exec -t -- sh -c 'echo ready; sleep 300'"))
    term.wait_text(r"\nready")
    client = _client_pid(term)
    os.kill(client, signum)
    term.wait_text(rf"rc={128 + signum}\b")
    assert _stty_flags(term) == sane
    assert not [u for u in server.units() if _unit_runs(server, u, "sleep 300")]


def test_terminal_is_sane_after_the_connection_is_lost(
    term: Tmux, server: Server, tmp_path: Path
) -> None:
    # A proxy in the background stands in for the server; killing it cuts the connection.
    sane = _stty_flags(term)
    uri_file = tmp_path / "proxy-uri"
    proxy = subprocess.Popen(
        [
            *SDEXEC_ARGV,
            "proxy",
            server.uri,
            "sh",
            "-c",
            f'echo "$SDEXEC_URI" > {uri_file}; sleep 300',
        ],
        env=server.env(),
    )
    try:
        term.clear()
        term.type(f"while ! test -s {uri_file}; do sleep 0.1; done; clear")
        term.wait_for(lambda s: s.strip() == "$")
        term.type(
            run_line(f"{SDEXEC} exec --uri $(cat {uri_file}) -t -- sh -c 'echo ready; sleep 300'")
        )
        term.wait_text(r"\nready")
        proxy.kill()
        term.wait_text(r"connection to server lost\s+rc=125\b")
    finally:
        proxy.kill()
        proxy.wait()
    assert _stty_flags(term) == sane


def test_pty_needs_a_terminal_on_stdin_unless_forced(server: Server) -> None:
    r = server.sdexec("exec", "-t", "--", "tty", input=b"")
    assert r.returncode == 125
    assert b"--pty needs a terminal on stdin" in r.stderr
    r = server.sdexec("exec", "-tt", "--", "tty", input=b"")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"/dev/pts/")


def test_a_client_that_does_not_know_the_extension_gets_plain_output(server: Server) -> None:
    """RFC 42 only: output on stdout (terminal line ends), stderr's EOF, finished."""
    responses = exec_stream(
        server.socket_path,
        ["sh", "-c", "echo out; echo err >&2; exit 4"],
        opts={"SDEXEC_PTY": "80x24"},
        flags=3,
    )
    out = b"".join(r["data"] for r in responses if r.get("stream") == "stdout")
    assert out == b"out\r\nerr\r\n"
    eofs = {r["stream"] for r in responses if r.get("eof")}
    assert eofs == {"stdout", "stderr"}
    assert [r["status"] for r in responses if r.get("type") == "finished"] == [4 << 8]


@pytest.mark.parametrize(
    ("opts", "flags", "message"),
    [
        ({"SDEXEC_PTY": "80"}, 3, "invalid window size"),
        ({"SDEXEC_PTY": "0x24"}, 3, "invalid window size"),
        ({"SDEXEC_PTY": "80x24"}, 2, "needs the stdout flag"),
    ],
)
def test_bad_terminal_requests_are_einval(
    server: Server, opts: dict[str, str], flags: int, message: str
) -> None:
    with pytest.raises(OSError) as info:
        exec_stream(server.socket_path, ["true"], opts=opts, flags=flags)
    assert info.value.errno == errno.EINVAL
    assert message in str(info.value)


def test_a_terminal_in_the_background_starts_without_a_terminal_on_stdin(
    server: Server,
) -> None:
    """Nothing is read from stdin by exec --bg --pty; detach tests: test_pty_detach.py."""
    r = server.sdexec("exec", "--pty", "--bg", "--waitable", "--label", "bgt", "--", "tty")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 0
    assert server.sdexec("wait", "bgt").returncode == 0
    out = server.sdexec("attach", "bgt")
    assert b"attach: bgt: label bgt not found" in out.stderr  # reaped by the wait
    assert b"it has ended (exit 0) and was reaped" in out.stderr


def test_a_background_terminal_with_channels_is_einval(server: Server) -> None:
    raw = Raw(server.socket_path)
    try:
        payload = exec_payload(["true"], 3, opts={"SDEXEC_PTY": "80x24"})
        payload["cmd"]["channels"] = ["CH"]
        msg = raw.rpc("sdexec.exec", payload)
    finally:
        raw.close()
    assert msg.errnum == errno.EINVAL
    assert "cannot be combined with channels" in (msg.error_text() or "")


def test_winsize_write_to_a_process_without_a_terminal_is_ignored(server: Server) -> None:
    responses = exec_stream(
        server.socket_path,
        ["sh", "-c", "read line; echo got $line"],
        flags=11,
        writes=[("pty.winsize", b"100x40"), ("stdin", b"x\n")],
    )
    out = b"".join(r["data"] for r in responses if r.get("stream") == "stdout")
    assert out == b"got x\n"


def test_pty_over_ssh(term: Tmux, server: Server, sshd: Sshd) -> None:
    uri = sshd.uri(server.socket_path)
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sshd.settings().items())
    cols, rows = term.pane_size()
    term.type(run_line(f"{env} {SDEXEC} exec --uri {uri} -t -- sh -c 'tty; stty size; sleep 300'"))
    term.wait_text(rf"/dev/pts/\d+\s+{rows} {cols}\s")
    term.keys("C-c")
    term.wait_text(r"rc=130\b")


def test_pty_over_tcp(cluster: Cluster, tmp_path: Path) -> None:
    uri = cluster.uris[TCP_RANK]
    assert uri.startswith("tcp://")
    with tmux(tmp_path, cluster.env()) as term:
        cols, rows = term.pane_size()
        term.type(run_line(f"{SDEXEC} exec --uri {uri} -t -- sh -c 'tty; stty size; sleep 300'"))
        term.wait_text(rf"/dev/pts/\d+\s+{rows} {cols}\s")
        term.keys("C-c")
        term.wait_text(r"rc=130\b")


# --- helpers ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid``."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True)
    kids: dict[int, list[int]] = {}
    for line in out.stdout.splitlines():
        child, parent = map(int, line.split())
        kids.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _client_pid(term: Tmux) -> int:
    for pid in _children(term.pane_pid()):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"sdexec.cli.main" in argv and b"exec" in argv:
            return pid
    raise AssertionError("no sdexec exec client in the pane")


def _unit_runs(server: Server, unit: str, text: str) -> bool:
    r = server.systemctl("show", "-p", "Description", "-p", "ActiveState", unit)
    return text in r.stdout and "ActiveState=active" in r.stdout
