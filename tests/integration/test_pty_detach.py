"""Background terminals (``exec --bg --pty``): detach, re-attach, take over, restart.

A tmux pane stands for the operator's terminal, as in test_pty.py.  Each
test has a server of its own on a module's own manager, so that it may be
killed and restarted (see servers.py); each checks that nothing is left:
no unit (the command's nor its terminal holder's) and no holder socket.
"""

from __future__ import annotations

import errno
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import assert_no_traceback
from rpc import Raw
from servers import OwnServer, own_manager, own_server
from terminal import Tmux, tmux

from sdexec.systemd.private import PrivateManager

SDEXEC = shlex.join([sys.executable, "-m", "sdexec.cli.main"])
BASH = ["bash", "--norc", "--noprofile", "-i"]
PROMPT = r"bash-[\d.]+#"


@pytest.fixture(scope="module")
def own_mgr(workdir: Path) -> Iterator[PrivateManager]:
    with own_manager(workdir) as manager:
        yield manager


@pytest.fixture
def own(own_mgr: PrivateManager, workdir: Path) -> Iterator[OwnServer]:
    with own_server(own_mgr, workdir) as srv:
        yield srv
        srv.ensure_running()
        for label in srv.sdexec("ps", "-n", "-o", "{label}").stdout.decode().split():
            srv.sdexec("kill", "-s", "KILL", label)  # an interactive bash ignores SIGTERM
        assert_no_traceback(srv)
        _nothing_left(srv)


@pytest.fixture
def term(own: OwnServer, tmp_path: Path) -> Iterator[Tmux]:
    with tmux(tmp_path, own.env()) as t:
        yield t


def _nothing_left(srv: OwnServer) -> None:
    """No unit of ours and no holder socket, once the processes are gone."""
    deadline = time.monotonic() + 30
    while srv.units() or list((srv.state_dir / "tty").glob("*")):
        assert time.monotonic() < deadline, (srv.units(), list((srv.state_dir / "tty").glob("*")))
        time.sleep(0.1)


def run_line(cmd: str) -> str:
    return f"{cmd}; echo rc=$?"


def start(srv: OwnServer, label: str, *cmd: str, waitable: bool = False) -> int:
    extra = ["--waitable"] if waitable else []
    r = srv.sdexec("exec", "--bg", "--pty", *extra, "--label", label, "--", *cmd)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def attach(term: Tmux, label: str, *opts: str) -> None:
    term.type(run_line(f"{SDEXEC} attach {' '.join(opts)} {label}".replace("  ", " ")))


def numbers(text: str) -> list[int]:
    """The lines of ``text`` that are only a number."""
    return [int(line) for line in text.splitlines() if re.fullmatch(r"\d+", line.strip())]


def test_detach_then_reattach_shows_the_last_screen_not_the_history(
    own: OwnServer, term: Tmux
) -> None:
    start(own, "dbg", *BASH)
    attach(term, "dbg")
    term.wait_text(PROMPT)
    term.type("PS1='R# '; seq 1 200")
    term.wait_text(r"\n200\s+R#\s*$")
    term.keys("C-]")
    term.wait_text(r"detached from dbg; it goes on running.*\s+rc=0\b")
    ps = own.sdexec("ps", "-o", "{label} {state}").stdout.decode()
    assert "dbg R" in ps
    term.clear()
    attach(term, "dbg")
    screen = term.wait_text(r"\n200\s+R#\s*$").string
    _, rows = term.pane_size()
    shown = numbers(term.history())
    assert shown == list(range(201 - len(shown), 201))  # a screenful, not the 200 lines
    assert 0 < len(shown) < rows
    assert "rc=0" not in screen  # the local screen was replaced, not added to
    term.type("echo typed-$((6*7))")
    term.wait_text(r"\ntyped-42\s+R#\s*$")
    term.type("exit 7")
    term.wait_text(r"\brc=7\b")


def test_a_second_attach_takes_the_terminal_over(own: OwnServer, tmp_path: Path) -> None:
    start(own, "two", *BASH)
    with tmux(tmp_path, own.env()) as first, tmux(tmp_path, own.env()) as second:
        attach(first, "two")
        first.wait_text(PROMPT)
        first.type("PS1='R# '; echo from-first")
        first.wait_text(r"\nfrom-first\s+R#\s*$")
        attach(second, "two")
        second.wait_text(r"\nfrom-first\s+R#\s*$")  # the screen as the first one left it
        first.wait_text(r"another client took the terminal over\s+rc=0\b")
        second.type("echo from-second")
        second.wait_text(r"\nfrom-second\s+R#\s*$")
        assert "from-second" not in first.screen()  # the first one is gone for good
        second.type("exit 4")
        second.wait_text(r"\brc=4\b")


def test_read_only_attaches_watch_without_typing(own: OwnServer, tmp_path: Path) -> None:
    start(own, "ro", *BASH)
    with tmux(tmp_path, own.env()) as writer, tmux(tmp_path, own.env()) as viewer:
        attach(writer, "ro")
        writer.wait_text(PROMPT)
        writer.type("PS1='R# '")
        # Not a terminal on stdin: read-only too; it ends with the process.
        piped = own.popen("attach", "ro", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        attach(viewer, "ro", "--read-only")
        viewer.wait_text(r"R#\s*$")
        viewer.type("echo typed-by-the-viewer")
        writer.type("echo seen-$((6*7))")
        viewer.wait_text(r"\nseen-42\s+R#\s*$")
        assert "typed-by-the-viewer" not in writer.screen()
        viewer.keys("C-]")
        viewer.wait_text(r"detached from ro; it goes on running.*\s+rc=0\b")
        writer.type("exit 3")
        writer.wait_text(r"\brc=3\b")
        out, _ = piped.communicate(timeout=30)
        assert piped.returncode == 3
        assert b"seen-42" in out
        assert b"typed-by-the-viewer" not in out


def test_the_terminal_survives_a_server_restart(own: OwnServer, term: Tmux) -> None:
    start(own, "rs", *BASH)
    attach(term, "rs")
    term.wait_text(PROMPT)
    term.type("PS1='R# '; echo before-$((1+1))")
    term.wait_text(r"\nbefore-2\s+R#\s*$")
    term.keys("C-]")
    term.wait_text(r"\brc=0\b")
    own.kill()
    own.start()
    term.clear()
    attach(term, "rs")
    term.wait_text(r"\nbefore-2\s+R#\s*$")
    # And a restart while attached: the client loses its server, the terminal stays.
    term.type("echo during")
    term.wait_text(r"\nduring\s+R#\s*$")
    own.kill()
    term.wait_text(r"connection to server lost\s+rc=125\b")
    own.start()
    term.clear()
    attach(term, "rs")
    term.wait_text(r"\nduring\s+R#\s*$")
    term.type("exit 0")
    term.wait_text(r"\brc=0\b")


def test_output_goes_on_with_nobody_attached(own: OwnServer, tmp_path: Path) -> None:
    done = tmp_path / "done"
    start(own, "noisy", "sh", "-c", f"seq 1 200000; touch {done}; exec sleep 300")
    deadline = time.monotonic() + 60
    while not done.exists():  # it would block on a full terminal if nobody read it
        assert time.monotonic() < deadline, "the program blocked on its terminal"
        time.sleep(0.1)
    r = own.sdexec("logs", "noisy")  # a terminal's logs: its screen, as text
    assert r.returncode == 0, r.stderr
    assert numbers(r.stdout.decode())[-1] == 200000
    assert len(r.stdout.splitlines()) <= 24


def test_a_finished_waitable_terminal_shows_its_last_screen(own: OwnServer) -> None:
    start(own, "fin", "sh", "-c", "echo last words; exit 5", waitable=True)
    deadline = time.monotonic() + 30
    while "fin Z" not in own.sdexec("ps", "-o", "{label} {state}").stdout.decode():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = own.sdexec("attach", "fin")
    assert r.returncode == 5
    assert b"last words" in r.stdout
    assert own.sdexec("wait", "fin").returncode == 5  # the holder goes now too


def test_sigpipe_ends_a_pipeline_in_a_background_terminal(own: OwnServer) -> None:
    """A background terminal is a shell's session: SIGPIPE is not ignored
    (systemd's IgnoreSIGPIPE=yes default would make ``yes | head`` spin on EPIPE)."""
    script = "grep SigIgn /proc/self/status; yes | head -n 1; exit 0"
    start(own, "pipe", "sh", "-c", script, waitable=True)
    deadline = time.monotonic() + 30
    while "pipe Z" not in own.sdexec("ps", "-o", "{label} {state}").stdout.decode():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = own.sdexec("attach", "pipe")
    assert r.returncode == 0, r.stderr
    assert own.sdexec("wait", "pipe").returncode == 0
    screen = r.stdout.decode()
    found = re.search(r"SigIgn:\s*([0-9a-f]+)", screen)
    assert found, screen
    assert not int(found.group(1), 16) & (1 << (13 - 1)), screen  # SIGPIPE is 13
    assert "Broken pipe" not in screen


def test_a_plain_rfc42_attach_gets_the_screen_and_the_end(own: OwnServer) -> None:
    pid = start(own, "plain", "sh", "-c", "echo hello; read x; echo got $x; exit 2")
    raw = Raw(own.socket_path)
    try:
        tag = raw.send("sdexec.attach", {"pid": pid, "label": "plain", "flags": 3}, streaming=True)
        out = b""
        responses = []
        while b"hello" not in out:
            msg = raw.recv(tag)
            responses.append(msg.json())
            out += _data(responses[-1])
        assert responses[0]["type"] == "attached" and responses[0]["pty"] is True
        assert "stdin" not in responses[0]  # not the writer: it did not ask
        assert own.sdexec("kill", "-s", "TERM", "plain").returncode == 0
        types = []
        while True:
            msg = raw.recv(tag)
            if msg.errnum:
                assert msg.errnum == 61  # ENODATA: the end of the stream
                break
            types.append(msg.json()["type"])
        assert types[-3:] == ["output", "output", "finished"]  # stdout and stderr EOFs
    finally:
        raw.close()


def _data(resp: dict[str, object]) -> bytes:
    io = resp.get("io")
    if isinstance(io, dict) and isinstance(io.get("data"), str):
        return io["data"].encode()
    return b""


def test_a_waitable_terminal_that_exits_0_ends_its_attach(own: OwnServer, term: Tmux) -> None:
    """systemd keeps a waitable unit active after its command exits 0: it must not
    keep the terminal open too (the slave never passes through systemd)."""
    start(own, "w0", "sh", "-c", "read x; echo got $x", waitable=True)
    attach(term, "w0")
    term.type("hello")
    term.wait_text(r"\ngot hello\s+rc=0\b")
    assert own.sdexec("wait", "w0").returncode == 0


def test_job_control_works_in_a_background_terminal(own: OwnServer, term: Tmux) -> None:
    start(own, "jc", *BASH)
    attach(term, "jc")
    term.wait_text(PROMPT)
    term.type("PS1='R# '; tty; sleep 300")
    term.wait_text(r"/dev/pts/\d+\s")
    term.keys("C-z")
    term.wait_text(r"Stopped\s+sleep 300")
    term.type("fg")
    term.wait_text(r"R# fg\nsleep 300\s*$")
    term.keys("C-c")
    term.wait_text(r"\^C\s*R#\s*$")
    term.type("exit 5")
    term.wait_text(r"\brc=5\b")


@pytest.mark.parametrize(
    ("members", "errnum", "text"),
    [
        ({"winsize": "80"}, errno.EINVAL, "invalid window size"),
        ({"winsize": 80}, errno.EPROTO, "'winsize' must be a string"),
        ({"terminal": "yes"}, errno.EPROTO, "'terminal' must be a boolean"),
    ],
)
def test_bad_attach_members_are_refused(
    own: OwnServer, members: dict[str, object], errnum: int, text: str
) -> None:
    start(own, "bad", "sh", "-c", "exec sleep 300")
    raw = Raw(own.socket_path)
    try:
        msg = raw.rpc(
            "sdexec.attach", {"pid": -1, "label": "bad", "flags": 3, **members}, streaming=True
        )
    finally:
        raw.close()
    assert msg.errnum == errnum
    assert text in (msg.error_text() or "")
    assert "bad R" in own.sdexec("ps", "-o", "{label} {state}").stdout.decode()


def test_a_killed_holder_hangs_the_terminal_up(own: OwnServer, term: Tmux) -> None:
    start(own, "hup", *BASH)
    attach(term, "hup")
    term.wait_text(PROMPT)
    (holder,) = own.units("sdexec-0-hup-tty-*")
    own.systemctl("kill", "-s", "KILL", holder)
    term.wait_text(r"\brc=129\b")  # bash, on SIGHUP from its terminal
