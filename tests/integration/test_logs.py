"""``sdexec logs`` as long as the journal has the output: after a wait, after the end of a
process that was never waitable, by label or pid; and what the other commands say then."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
from pathlib import Path

from conftest import Server
from faults import log_mark, log_since

_n = itertools.count()


def label(stem: str) -> str:
    return f"{stem}-{next(_n)}"


def bg(server: Server, lab: str, *argv: str, waitable: bool = True) -> int:
    args = ["exec", "--bg", "--label", lab, *(["--waitable"] if waitable else []), "--", *argv]
    r = server.sdexec(*args)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def settled_logs(server: Server, *args: str) -> bytes:
    """``sdexec logs ARGS`` once it gives the same output twice (journald may lag an exit)."""
    deadline = time.monotonic() + 10
    last = None
    while time.monotonic() < deadline:
        r = server.sdexec("logs", *args)
        assert r.returncode == 0, r.stderr
        if r.stdout and r.stdout == last:
            return r.stdout
        last = r.stdout
        time.sleep(0.2)
    return last or b""


def gone(server: Server, lab: str) -> None:
    """Wait until the server has forgotten ``lab`` (it is reaped)."""
    deadline = time.monotonic() + 10
    while lab.encode() in server.sdexec("ps", "-n", "-o", "{label}").stdout.split():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_finished_non_waitable_process_still_has_its_logs(server: Server) -> None:
    lab = label("nowait")
    bg(server, lab, "sh", "-c", "echo out; echo err >&2", waitable=False)
    gone(server, lab)
    r = server.sdexec("logs", lab)
    assert r.returncode == 0, r.stderr
    assert settled_logs(server, lab) == b"out\n"
    assert server.sdexec("logs", lab).stderr == b"err\n"


def test_logs_after_wait_by_label_and_by_pid(server: Server) -> None:
    lab = label("waited")
    pid = bg(server, lab, "sh", "-c", "echo one; echo two; exit 3")
    assert server.sdexec("wait", lab).returncode == 3
    assert settled_logs(server, lab) == b"one\ntwo\n"
    assert settled_logs(server, str(pid)) == b"one\ntwo\n"
    assert server.sdexec("logs", "--tail", "1", lab).stdout == b"two\n"


def test_kill_and_wait_of_a_reaped_process_say_so(server: Server) -> None:
    lab = label("reaped")
    bg(server, lab, "sh", "-c", "exit 3")
    assert server.sdexec("wait", lab).returncode == 3
    for command in ("wait", "kill", "attach"):
        r = server.sdexec(command, lab)
        assert r.returncode != 0
        assert f"has ended (exit 3) and was reaped; its output: sdexec logs {lab}".encode() in (
            r.stderr
        ), r.stderr


def test_logs_of_a_label_never_seen_is_a_clear_error(server: Server) -> None:
    r = server.sdexec("logs", "never-was")
    assert r.returncode != 0
    assert r.stderr == (
        b"sdexec: logs: never-was: label never-was not found: "
        b"it does not belong to any subprocess\n"
    )


def test_the_readme_sequence_attach_then_logs_kill_wait(server: Server) -> None:
    lab = label("seq")
    bg(server, lab, "sh", "-c", "echo working; exit 0")
    assert server.sdexec("attach", lab).returncode == 0
    assert settled_logs(server, lab) == b"working\n"
    assert server.sdexec("wait", lab).returncode == 0
    assert settled_logs(server, lab) == b"working\n"


def journald_pid(server: Server) -> int:
    """The pid of the private journald of the server's manager (it lives in the manager's slice)."""
    slice_ = str(server.manager.slice.relative_to(server.manager.slice.parent))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "systemd-journal":
                continue
            if slice_ in (proc / "cgroup").read_text():
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError("no private journald found")


def test_output_of_children_that_exited_before_journald_read_it_is_found(server: Server) -> None:
    """journald reads the lines only after their writers are gone: the stream still names the
    unit.  (Behind systemd-cat, a child's lines then belonged to no unit and were lost.)"""
    lab = label("children")
    journald = journald_pid(server)
    os.kill(journald, signal.SIGSTOP)
    try:
        bg(server, lab, "sh", "-c", "/bin/echo from-a-child; /bin/echo err-child >&2; echo shell")
        deadline = time.monotonic() + 10
        while f"{lab} Z".encode() not in server.sdexec("ps", "-o", "{label} {state}").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.05)  # all of them have exited
    finally:
        os.kill(journald, signal.SIGCONT)
    assert settled_logs(server, lab) == b"from-a-child\nshell\n"
    r = server.sdexec("attach", lab)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"from-a-child\nshell\n", b"err-child\n")
    server.sdexec("wait", lab)


def test_reading_logs_leaves_no_unknown_child_warning(server: Server) -> None:
    lab = label("reaper")
    bg(server, lab, "sh", "-c", "echo once")
    assert server.sdexec("wait", lab).returncode == 0
    mark = log_mark(server)
    for _ in range(20):
        assert server.sdexec("logs", lab).returncode == 0
    assert "Unknown child process" not in log_since(server, mark)


def test_timestamps_and_since(server: Server) -> None:
    lab = label("stamps")
    bg(server, lab, "sh", "-c", "echo early; sleep 2; echo late")
    assert server.sdexec("wait", lab).returncode == 0
    assert settled_logs(server, lab) == b"early\nlate\n"
    stamped = server.sdexec("logs", "-t", lab).stdout.decode().splitlines()
    stamp = re.compile(r"[A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d\.\d{6} ")
    assert [stamp.sub("", line, count=1) for line in stamped] == ["early", "late"]
    assert all(stamp.match(line) for line in stamped)
    # --since the second of the later line: the early one is left out.
    when = server.sdexec("logs", "--json", "-t", lab).stdout.decode().splitlines()
    late = json.loads(when[-1])["timestamp"]
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(late - 0.5))
    assert server.sdexec("logs", "--since", since, lab).stdout == b"late\n"


def test_a_since_journalctl_cannot_read_is_a_clear_error(server: Server) -> None:
    lab = label("badsince")
    bg(server, lab, "echo", "x")
    assert server.sdexec("wait", lab).returncode == 0
    r = server.sdexec("logs", "--since", "the day after tomorrow-ish", lab)
    assert r.returncode == 1
    assert b"journalctl: Failed to parse" in r.stderr, r.stderr
