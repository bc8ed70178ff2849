"""Background processes: labels, wait, kill, ps states, errors."""

from __future__ import annotations

import errno
import itertools
import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Server
from rpc import Raw, exec_payload

_n = itertools.count()


def label(stem: str) -> str:
    return f"{stem}-{next(_n)}"


def bg(server: Server, lab: str, *argv: str, waitable: bool = True) -> int:
    args = ["exec", "--bg", "--label", lab, *(["--waitable"] if waitable else []), "--", *argv]
    r = server.sdexec(*args)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def ps_state(server: Server, lab: str) -> str | None:
    for line in server.sdexec("ps", "-o", "{label} {state}").stdout.decode().splitlines():
        name, _, state = line.partition(" ")
        if name == lab:
            return state
    return None


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["true"], 0),
        (["false"], 1),
        (["sh", "-c", "exit 199"], 199),
    ],
)
def test_wait_returns_the_exit_code(server: Server, argv: list[str], code: int) -> None:
    lab = label("wait")
    bg(server, lab, *argv)
    assert server.sdexec("wait", lab).returncode == code


def test_bg_prints_the_pid(server: Server) -> None:
    lab = label("pid")
    pid = bg(server, lab, "true")
    assert pid > 1
    assert server.sdexec("wait", str(pid)).returncode == 0


def test_wait_blocks_until_the_process_exits(server: Server) -> None:
    lab = label("slow")
    bg(server, lab, "sleep", "1")
    t0 = time.monotonic()
    assert server.sdexec("wait", lab).returncode == 0
    assert time.monotonic() - t0 >= 0.7


def test_kill_9_then_wait_gives_137(server: Server) -> None:
    lab = label("kill")
    bg(server, lab, "sleep", "60")
    assert server.sdexec("kill", "-s", "9", lab).returncode == 0
    assert server.sdexec("wait", lab).returncode == 137


def test_kill_by_signal_name(server: Server) -> None:
    lab = label("term")
    bg(server, lab, "sleep", "60")
    assert server.sdexec("kill", "-s", "TERM", lab).returncode == 0
    assert server.sdexec("wait", lab).returncode == 143


def test_duplicate_label_is_refused(server: Server) -> None:
    lab = label("dup")
    bg(server, lab, "sleep", "60")
    r = server.sdexec("exec", "--bg", "--label", lab, "--", "true")
    assert r.returncode != 0
    assert b"in use" in r.stderr or b"exists" in r.stderr
    server.sdexec("kill", "-s", "9", lab)
    assert server.sdexec("wait", lab).returncode == 137


def test_empty_label_is_refused(server: Server) -> None:
    r = server.sdexec("exec", "--bg", "--label", "", "--", "true")
    assert r.returncode != 0
    assert b"label" in r.stderr


def test_ps_shows_running_then_zombie(server: Server) -> None:
    lab = label("ps")
    bg(server, lab, "sleep", "1")
    assert ps_state(server, lab) == "R"
    deadline = time.monotonic() + 10
    while ps_state(server, lab) != "Z" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ps_state(server, lab) == "Z"
    assert server.sdexec("wait", lab).returncode == 0
    assert ps_state(server, lab) is None


def test_second_wait_fails(server: Server) -> None:
    lab = label("twice")
    bg(server, lab, "true")
    assert server.sdexec("wait", lab).returncode == 0
    r = server.sdexec("wait", lab)
    assert r.returncode != 0
    assert b"has ended (exit 0) and was reaped" in r.stderr


def test_concurrent_second_waiter_is_refused(server: Server) -> None:
    lab = label("busy")
    bg(server, lab, "sleep", "2")
    first = server.popen("wait", lab, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = server.sdexec("wait", lab)
    assert r.returncode != 0
    assert first.wait(10) == 0


def test_waiting_on_a_non_waitable_process_fails(server: Server) -> None:
    lab = label("nowait")
    bg(server, lab, "sleep", "60", waitable=False)
    r = server.sdexec("wait", lab)
    assert r.returncode != 0
    assert b"not waitable" in r.stderr
    assert server.sdexec("kill", "-s", "9", lab).returncode == 0


def test_unknown_label_is_not_found(server: Server) -> None:
    for cmd in (["wait", "no-such-label"], ["kill", "no-such-label"]):
        r = server.sdexec(*cmd)
        assert r.returncode != 0
        assert b"does not belong to any subprocess" in r.stderr


def test_unknown_pid_is_not_found(server: Server) -> None:
    for cmd in (["wait", "999999"], ["kill", "999999"]):
        r = server.sdexec(*cmd)
        assert r.returncode != 0
        assert b"does not belong to any subprocess" in r.stderr


def test_background_stdin_is_at_eof(server: Server) -> None:
    lab = label("stdin")
    bg(server, lab, "cat")
    assert server.sdexec("wait", lab).returncode == 0


def test_ps_and_list_show_a_stopped_process_as_t(server: Server) -> None:
    lab = label("stopme")
    pid = bg(server, lab, "sleep", "60", waitable=False)
    time.sleep(0.2)
    assert server.sdexec("kill", "-s", "STOP", lab).returncode == 0
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ps_state(server, lab) == "T"
    listed = json.loads(server.sdexec("ps", "--json").stdout)["procs"]
    assert [p["state"] for p in listed if p["label"] == lab] == ["T"]
    assert server.sdexec("kill", "-s", "CONT", lab).returncode == 0
    deadline = time.monotonic() + 10
    while ps_state(server, lab) != "R":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert server.sdexec("kill", "-s", "KILL", lab).returncode == 0


# --- waitable while connected (SDEXEC_WAITABLE_WHILE_CONNECTED) -----------------------------

WHILE_CONNECTED = {"SDEXEC_WAITABLE_WHILE_CONNECTED": "yes"}
BG_WAITABLE = 16 | 1 | 2  # waitable, stdout, stderr (a non-streaming exec: background)


def test_waitable_while_connected_is_waited_on_that_connection(server: Server) -> None:
    lab = label("scoped")
    raw = Raw(server.socket_path)
    try:
        started = raw.rpc("sdexec.exec", exec_payload(["sh", "-c", "exit 3"], BG_WAITABLE, lab,
                                                      WHILE_CONNECTED))  # fmt: skip
        assert started.json()["type"] == "started"
        deadline = time.monotonic() + 30
        while ps_state(server, lab) != "Z":  # finished, still owed to this connection
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert raw.rpc("sdexec.wait", {"pid": started.json()["pid"]}).json()["status"] == 3 << 8
    finally:
        raw.close()


def test_waitable_while_connected_is_forgotten_once_its_connection_goes(server: Server) -> None:
    done, running = label("scoped-done"), label("scoped-running")
    raw = Raw(server.socket_path)
    try:
        raw.rpc("sdexec.exec", exec_payload(["true"], BG_WAITABLE, done, WHILE_CONNECTED))
        raw.rpc("sdexec.exec", exec_payload(["sleep", "1"], BG_WAITABLE, running, WHILE_CONNECTED))
        deadline = time.monotonic() + 30
        while ps_state(server, done) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        raw.close()
    deadline = time.monotonic() + 30
    while ps_state(server, done) is not None or ps_state(server, running) is not None:
        assert time.monotonic() < deadline, server.sdexec("ps").stdout.decode()
        time.sleep(0.05)
    while [u for u in server.units() if done in u or running in u]:  # the units go too
        assert time.monotonic() < deadline, server.units()
        time.sleep(0.05)


def test_waitable_while_connected_must_be_yes_or_no(server: Server) -> None:
    raw = Raw(server.socket_path)
    try:
        bad = {"SDEXEC_WAITABLE_WHILE_CONNECTED": "maybe"}
        msg = raw.rpc("sdexec.exec", exec_payload(["true"], BG_WAITABLE, label("scoped-bad"), bad))
        assert msg.errnum == errno.EINVAL
        assert "yes or no" in (msg.error_text() or "")
    finally:
        raw.close()
