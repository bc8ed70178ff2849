"""The sdexec command line: parsing, requests, output and exit codes (fake server)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from test_client import Conn, ScriptedServer, short_path

from sdexec.cli import main as cli
from sdexec.cli import parser as cli_parser
from sdexec.cli.common import target_payload
from sdexec.cli.exec import command_from_args
from sdexec.cli.ps import header, render
from sdexec.proto.message import Message, MsgFlag

ENODATA = errno.ENODATA


def exec_args(*argv: str) -> argparse.Namespace:
    return cli_parser.parse(["exec", *argv])[0]


def finished(conn: Conn, req: Message, status: int) -> None:
    conn.respond(req, {"type": "finished", "status": status})
    conn.respond(req, errnum=ENODATA)


def one_exec(status: int, seen: list[Message] | None = None) -> Any:
    def script(conn: Conn) -> None:
        req = conn.recv()
        if seen is not None:
            seen.append(req)
        conn.respond(req, {"type": "started", "pid": 42})
        finished(conn, req, status)

    return script


# --- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "payload"),
    [
        ("1234", {"pid": 1234}),
        ("demo-sleep", {"pid": -1, "label": "demo-sleep"}),
        ("12a", {"pid": -1, "label": "12a"}),
        ("٣", {"pid": -1, "label": "٣"}),
    ],
)
def test_an_all_digit_argument_is_a_pid_anything_else_a_label(
    arg: str, payload: dict[str, Any]
) -> None:
    assert target_payload(arg) == payload


def test_exec_sends_the_callers_environment_with_env_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEEP", "me")
    monkeypatch.setenv("OVERRIDE", "old")
    cmd = command_from_args(exec_args("--env", "OVERRIDE=new", "--env", "ADDED=a=b", "true"))
    assert cmd["env"]["KEEP"] == "me"
    assert cmd["env"]["OVERRIDE"] == "new"
    assert cmd["env"]["ADDED"] == "a=b"


def test_property_becomes_an_sdexec_prop_option_and_setopt_an_option() -> None:
    cmd = command_from_args(
        exec_args("-p", "MemoryMax=1G", "--property", "Nice=5", "--setopt", "x=y", "true")
    )
    assert cmd["opts"] == {"SDEXEC_PROP_MemoryMax": "1G", "SDEXEC_PROP_Nice": "5", "x": "y"}


def test_exec_cwd_defaults_to_the_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert command_from_args(exec_args("true"))["cwd"] == str(tmp_path)
    assert command_from_args(exec_args("-d", "/srv", "true"))["cwd"] == "/srv"


def test_exec_command_after_double_dash_keeps_its_own_options() -> None:
    args = exec_args("-n", "--", "ls", "-n", "--", "x")
    assert args.no_stdin
    assert args.cmdline == ["ls", "-n", "--", "x"]
    args = exec_args("ls", "-l")
    assert args.cmdline == ["ls", "-l"]


@pytest.mark.parametrize("bad", [["exec"], ["exec", "--env", "NOEQUALS", "true"], ["exec", "--"]])
def test_bad_exec_arguments_are_usage_errors(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(bad)
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("text", "num"), [("TERM", 15), ("SIGTERM", 15), ("term", 15), ("kill", 9), ("2", 2)]
)
def test_signals_by_name_or_number(text: str, num: int) -> None:
    assert cli_parser.signal_number(text) == num


@pytest.mark.parametrize("text", ["FOO", "0", "99", "SIG"])
def test_unknown_signals_are_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli_parser.signal_number(text)


@pytest.mark.parametrize("command", [[], ["exec"], ["kill"], ["wait"], ["ps"], ["serve"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_serve_hands_the_parsed_namespace_to_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[argparse.Namespace] = []
    fake = types.ModuleType("sdexec.server.daemon")

    def fake_main(args: argparse.Namespace) -> int:
        got.append(args)
        return 0

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sdexec.server.daemon", fake)
    assert cli.main(["serve"]) == 0
    assert cli.main(["serve", "--uri", "local:///x", "--systemd", "private", "--rank", "3",
                     "--state-dir", "/s", "--log-level", "debug"]) == 0  # fmt: skip
    defaults, given = got
    assert (defaults.uri, defaults.systemd, defaults.rank) == (None, None, 0)
    assert (defaults.state_dir, defaults.log_level) == (None, "info")
    assert (given.uri, given.systemd, given.rank) == ("local:///x", "private", 3)
    assert (given.state_dir, given.log_level) == ("/s", "debug")


# --- exec ------------------------------------------------------------------------------------


def test_exec_streams_and_exits_with_the_commands_code(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    seen: list[Message] = []

    def script(conn: Conn) -> None:
        req = conn.recv()
        seen.append(req)
        conn.respond(req, {"type": "started", "pid": 42})
        io = {"stream": "stdout", "rank": "0", "data": "hello\n"}
        conn.respond(req, {"type": "output", "pid": 42, "io": io})
        io = {"stream": "stderr", "rank": "0", "data": "oops"}
        conn.respond(req, {"type": "output", "pid": 42, "io": io})
        finished(conn, req, 3 << 8)

    with ScriptedServer(short_path(tmp_path), script) as server:
        code = cli.main(["exec", "--uri", server.uri, "-n", "--label", "x", "--", "sh", "-c", "x"])
    assert code == 3
    assert capfd.readouterr() == ("hello\n", "oops")
    (req,) = seen
    assert req.flags & MsgFlag.STREAMING and req.topic == "sdexec.exec"
    payload = req.json()
    assert payload["flags"] == 11 and payload["local_flags"] == 0
    assert payload["cmd"]["cmdline"] == ["sh", "-c", "x"]
    assert payload["cmd"]["label"] == "x"


@pytest.mark.parametrize(("status", "code"), [(0, 0), (1 << 8, 1), (9, 137), (11 | 0x80, 139)])
def test_exec_exit_code_follows_the_wait_status(tmp_path: Path, status: int, code: int) -> None:
    with ScriptedServer(short_path(tmp_path), one_exec(status)) as server:
        assert cli.main(["exec", "--uri", server.uri, "-n", "true"]) == code


def test_waitable_without_bg_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["exec", "--uri", "local:///nowhere", "-n", "--waitable", "true"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sdexec exec")
    assert "--waitable needs --bg" in err


def test_an_unknown_option_shows_the_subcommands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["ps", "--bogus"], ["exec", "--bogus", "true"], ["kill", "--bogus", "x"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"usage: sdexec {argv[0]}"), err
        assert f"sdexec {argv[0]}: error: unrecognized arguments: --bogus" in err


def test_an_option_value_with_a_dash_says_how_to_write_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["exec", "--bg", "--label", "-x", "true"])
    assert "(a value that starts with '-' is written --label=VALUE)" in capsys.readouterr().err
    assert cli_parser.parse(["exec", "--bg", "--label=-x", "true"])[0].label == "-x"


@pytest.mark.parametrize("command", ["attach", "logs", "exec", "ps", "serve", "wait", "kill"])
def test_help_is_wrapped_to_the_terminal(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_parser, "_width", 78)
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80, [ln for ln in lines if len(ln) > 80]


@pytest.mark.parametrize(
    ("errnum", "text", "code", "message"),
    [
        (errno.ENOENT, None, 127, "sdexec: nosuch: No such file or directory\n"),
        (errno.ENOENT, "nosuch: command not found", 127, "sdexec: nosuch: command not found\n"),
        (errno.EACCES, None, 126, "sdexec: nosuch: Permission denied\n"),
        (errno.EPERM, "not allowed", 126, "sdexec: not allowed\n"),
        (errno.EEXIST, "label x is in use", 125, "sdexec: label x is in use\n"),
    ],
)
def test_exec_errors_map_to_exit_codes(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    errnum: int,
    text: str | None,
    code: int,
    message: str,
) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv(), errnum=errnum, text=text)

    with ScriptedServer(short_path(tmp_path), script) as server:
        assert cli.main(["exec", "--uri", server.uri, "-n", "nosuch"]) == code
    assert capfd.readouterr().err == message


def test_exec_without_a_server_exits_125(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "none"
    assert cli.main(["exec", "--uri", f"local://{sock}", "-n", "true"]) == 125
    assert capfd.readouterr().err == f"sdexec: server socket {sock} was not found\n"


def test_top_level_uri_and_sdexec_uri_name_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ScriptedServer(short_path(tmp_path), one_exec(0)) as server:
        assert cli.main(["--uri", server.uri, "exec", "-n", "true"]) == 0
    short_path(tmp_path).unlink()
    with ScriptedServer(short_path(tmp_path), one_exec(2 << 8)) as server:
        monkeypatch.setenv("SDEXEC_URI", server.uri)
        assert cli.main(["exec", "-n", "true"]) == 2


def test_exec_forwards_stdin_from_fd_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[dict[str, Any]] = []

    def script(conn: Conn) -> None:
        req = conn.recv()
        conn.respond(req, {"type": "started", "pid": 42})
        while True:
            msg = conn.recv()
            received.append(msg.json()["io"])
            if msg.json()["io"].get("eof"):
                break
        finished(conn, req, 0)

    src = tmp_path / "in"
    src.write_bytes(b"line 1\nline 2")
    saved = os.dup(0)
    fd = os.open(src, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    try:
        with ScriptedServer(short_path(tmp_path), script) as server:
            assert cli.main(["exec", "--uri", server.uri, "cat"]) == 0
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    data = "".join(io.get("data", "") for io in received)
    assert data == "line 1\nline 2"
    assert received[-1] == {"stream": "stdin", "rank": "0", "eof": True}


# --- exec --bg -----------------------------------------------------------------------------


def test_bg_sends_a_non_streaming_request_and_prints_the_pid(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    seen: list[Message] = []

    def script(conn: Conn) -> None:
        req = conn.recv()
        seen.append(req)
        conn.respond(req, {"type": "started", "pid": 4242})

    with ScriptedServer(short_path(tmp_path), script) as server:
        argv = ["exec", "--uri", server.uri, "--bg", "--waitable", "--label", "s", "sleep", "30"]
        assert cli.main(argv) == 0
    assert capfd.readouterr().out == "4242\n"
    (req,) = seen
    assert not req.flags & MsgFlag.STREAMING
    payload = req.json()
    assert payload["flags"] & 16
    assert not payload["flags"] & 8
    assert payload["cmd"]["label"] == "s"


def test_bg_error_prints_the_message_and_exits_1(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    def script(conn: Conn) -> None:
        conn.respond(conn.recv(), errnum=errno.EEXIST, text="label s is already in use")

    with ScriptedServer(short_path(tmp_path), script) as server:
        assert cli.main(["exec", "--uri", server.uri, "--bg", "--label", "s", "true"]) == 1
    assert capfd.readouterr().err == "sdexec: label s is already in use\n"


# --- kill, wait, ps ----------------------------------------------------------------------------


def rpc_script(seen: list[Message], payload: Any = None, **error: Any) -> Any:
    def script(conn: Conn) -> None:
        req = conn.recv()
        seen.append(req)
        conn.respond(req, payload, **error)

    return script


def test_kill_by_label_with_a_named_signal(tmp_path: Path) -> None:
    seen: list[Message] = []
    with ScriptedServer(short_path(tmp_path), rpc_script(seen)) as server:
        assert cli.main(["kill", "--uri", server.uri, "-s", "KILL", "demo"]) == 0
    assert seen[0].topic == "sdexec.kill"
    assert seen[0].json() == {"pid": -1, "label": "demo", "signum": 9}


def test_kill_by_pid_defaults_to_sigterm(tmp_path: Path) -> None:
    seen: list[Message] = []
    with ScriptedServer(short_path(tmp_path), rpc_script(seen)) as server:
        assert cli.main(["kill", "--uri", server.uri, "123"]) == 0
    assert seen[0].json() == {"pid": 123, "signum": signal.SIGTERM}


def test_kill_error_names_the_target(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    seen: list[Message] = []
    script = rpc_script(seen, errnum=errno.ESRCH, text="No such process")
    with ScriptedServer(short_path(tmp_path), script) as server:
        assert cli.main(["kill", "--uri", server.uri, "123"]) == 1
    assert capfd.readouterr().err == "sdexec: kill: 123: No such process\n"


@pytest.mark.parametrize(("status", "code"), [(0, 0), (15, 143), (7 << 8, 7)])
def test_wait_exits_with_the_process_status(tmp_path: Path, status: int, code: int) -> None:
    seen: list[Message] = []
    with ScriptedServer(short_path(tmp_path), rpc_script(seen, {"status": status})) as server:
        assert cli.main(["wait", "--uri", server.uri, "demo-sleep"]) == code
    assert seen[0].topic == "sdexec.wait"
    assert seen[0].json() == {"pid": -1, "label": "demo-sleep"}


def test_wait_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    script = rpc_script([], errnum=errno.ECHILD, text="process 5 is not waitable")
    with ScriptedServer(short_path(tmp_path), script) as server:
        assert cli.main(["wait", "--uri", server.uri, "5"]) == 125
    assert capfd.readouterr().err == "sdexec: wait: 5: process 5 is not waitable\n"


LIST = {
    "rank": 0,
    "procs": [
        {"pid": 19803, "cmd": "sleep", "label": "demo-sleep", "state": "R"},
        {"pid": 7, "cmd": "true", "label": None, "state": "Z"},
    ],
}
NOW = time.time()
LONG = {
    "rank": 0,
    "time": NOW,  # the server's clock: ELAPSED is counted to it
    "procs": [
        {
            "pid": 19803, "cmd": "sleep", "label": "job", "state": "R", "waitable": True,
            "unit": "sdexec-0-job-1a-1.service", "started": NOW - 3725,
        },
        {
            "pid": 7, "cmd": "true", "label": None, "state": "Z", "waitable": False,
            "unit": "sdexec-0-1a-2.service", "started": NOW - 70, "ended": NOW - 10,
        },
    ],
}  # fmt: skip


def test_ps_prints_a_table(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    seen: list[Message] = []
    with ScriptedServer(short_path(tmp_path), rpc_script(seen, LIST)) as server:
        assert cli.main(["ps", "--uri", server.uri]) == 0
    assert seen[0].topic == "sdexec.list" and seen[0].json() == {"details": True}
    assert capfd.readouterr().out == (
        "  PID LABEL      STATE START ELAPSED CMD\n"
        "19803 demo-sleep R     -           - sleep\n"
        "    7 -          Z     -           - true\n"
    )


def test_ps_shows_start_elapsed_and_with_l_waitable_and_unit() -> None:
    start = time.strftime("%H:%M:%S", time.localtime(NOW - 3725))
    if time.strftime("%Y%m%d", time.localtime(NOW - 3725)) != time.strftime("%Y%m%d"):
        start = time.strftime("%b%d", time.localtime(NOW - 3725))  # just after midnight
    out = render(LONG, long=True).splitlines()
    assert out[0].split() == [
        "PID",
        "LABEL",
        "STATE",
        "START",
        "ELAPSED",
        "WAITABLE",
        "UNIT",
        "CMD",
    ]
    assert out[1].split() == ["19803", "job", "R", start, "01:02:05", "yes",
                              "sdexec-0-job-1a-1.service", "sleep"]  # fmt: skip
    assert out[2].split()[3:7] == [out[2].split()[3], "01:00", "no", "sdexec-0-1a-2.service"]
    assert render(LONG, "{label} {waitable} {unit}", with_header=False).splitlines()[1] == (
        "- no sdexec-0-1a-2.service"
    )


def test_ps_json_prints_the_raw_response(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with ScriptedServer(short_path(tmp_path), rpc_script([], LIST)) as server:
        assert cli.main(["ps", "--uri", server.uri, "--json"]) == 0
    assert json.loads(capfd.readouterr().out) == LIST


def test_ps_format() -> None:
    assert render(LIST, "{pid:>6d} {cmd}") == "   PID CMD\n 19803 sleep\n     7 true\n"
    assert render(LIST, "{rank}:{label}", with_header=False) == "0:demo-sleep\n0:-\n"
    assert header("{pid:06d} {state:^5}") == "   PID STATE"
    assert header("{label:*<8}|") == "LABEL***|"


def test_ps_unknown_field(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with ScriptedServer(short_path(tmp_path), rpc_script([], LIST)) as server:
        assert cli.main(["ps", "--uri", server.uri, "-o", "{nope}"]) == 1
    assert "unknown field 'nope'" in capfd.readouterr().err


# --- start-up cost -----------------------------------------------------------------------------


def test_the_cli_never_imports_asyncio_dbus_zmq_or_structlog() -> None:
    code = """
import sys
import sdexec.cli.main, sdexec.cli.parser
assert "sdexec.cli.exec" not in sys.modules, "subcommands load lazily"
sdexec.cli.parser.build_parser()
import sdexec.cli.exec, sdexec.cli.kill, sdexec.cli.wait, sdexec.cli.ps
heavy = {"asyncio", "dbus_fast", "zmq", "structlog", "socket", "selectors"}
loaded = sorted(heavy & set(sys.modules))
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plain_exec_imports_no_argparse_json_enum_or_re() -> None:
    # What a plain "sdexec exec" loads beyond the interpreter's own start-up.
    code = """
import sys
before = set(sys.modules)
from sdexec.cli.main import main
from sdexec.cli.quick import parse_exec
assert parse_exec(["-n", "--", "true"]) is not None
import sdexec.cli.exec
heavy = {"argparse", "json", "enum", "re", "signal", "socket", "typing", "gettext", "asyncio"}
print(sorted(heavy & (set(sys.modules) - before)))
"""
    r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert r.stdout == "[]\n"


# --- many ranks (-r/-x) --------------------------------------------------------------


def test_ranks_options_on_exec_ps_kill_wait() -> None:
    parser, _ = cli_parser.build_parser()
    for argv in (["exec", "-r", "0-3", "-l", "true"], ["ps", "-r", "all"],
                 ["kill", "-r", "1", "job"], ["wait", "-x", "2", "job"]):  # fmt: skip
        args = parser.parse_args(argv)
        assert (args.ranks, args.exclude) != (None, None)


def test_exclude_alone_means_all_ranks() -> None:
    parser, subs = cli_parser.build_parser()
    args = parser.parse_args(["exec", "-x", "3", "true"])
    assert cli_parser.many_ranks(args, subs) is True
    assert args.ranks == "all"


def test_without_ranks_the_single_server_path_is_taken() -> None:
    parser, subs = cli_parser.build_parser()
    assert cli_parser.many_ranks(parser.parse_args(["exec", "true"]), subs) is False


def test_uri_and_ranks_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["exec", "--uri", "local:///x", "-r", "all", "true"])
    assert "--uri and -r/-x exclude each other" in capsys.readouterr().err


def test_perilog_run_needs_a_phase(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["perilog", "run", "--", "true"])
    assert "--phase" in capsys.readouterr().err


def test_perilog_timeouts_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["perilog", "run", "--phase", "prolog", "--timeout", "0", "--", "true"])
    assert "positive number of seconds" in capsys.readouterr().err


def test_exec_with_ranks_but_no_hosts_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SDEXEC_HOSTS", raising=False)
    monkeypatch.delenv("FLUX_URI", raising=False)
    assert cli.main(["exec", "-r", "all", "true"]) == 125
    assert "give --hosts FILE, set SDEXEC_HOSTS, or run inside Flux" in capsys.readouterr().err


def test_sign_goes_with_ranks() -> None:
    args, many = cli_parser.parse(["exec", "--sign", "-r", "all", "true"])
    assert many and args.sign


@pytest.mark.parametrize("command", ["attach", "kill", "wait", "logs"])
@pytest.mark.parametrize(
    ("argv", "ref", "shown"),
    [
        (["job"], {"pid": -1, "label": "job"}, "job"),
        (["42"], {"pid": 42}, "42"),
        (["--label", "job"], {"pid": -1, "label": "job"}, "job"),
        (["--label", "4294967297"], {"pid": -1, "label": "4294967297"}, "--label 4294967297"),
        (["--pid", "42"], {"pid": 42}, "42"),
    ],
)
def test_a_process_is_named_by_pid_label_or_the_label_and_pid_options(
    command: str, argv: list[str], ref: dict[str, Any], shown: str
) -> None:
    args = cli_parser.parse([command, *argv])[0]
    assert (args.target_ref, args.target) == (ref, shown)


@pytest.mark.parametrize(
    "argv", [[], ["job", "--label", "job"], ["--pid", "1", "--label", "x"], ["--pid", "0"]]
)
def test_a_process_must_be_named_once(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_parser.parse(["attach", *argv])
    assert info.value.code == 2
    assert "sdexec attach: error:" in capsys.readouterr().err
