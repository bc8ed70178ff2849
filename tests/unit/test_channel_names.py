"""Channel and msgchan validation, buffer sizes, helper command line (sdexec.server.channels)."""

from __future__ import annotations

import errno
import os
import py_compile
import sys
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Variant

from sdexec.base.errors import SdexecError
from sdexec.proto.rfc42 import Command, parse_command
from sdexec.server import channels as c
from sdexec.server import msgchan


def cmd(
    channels: list[str] | None = None,
    msgchans: list[dict[str, str]] | None = None,
    opts: dict[str, str] | None = None,
) -> Command:
    obj: dict[str, Any] = {
        "cmdline": ["true"],
        "env": {},
        "opts": opts or {},
        "channels": channels or [],
    }
    if msgchans is not None:
        obj["msgchans"] = msgchans
    return parse_command(obj)


def einval(command: Command) -> str:
    with pytest.raises(SdexecError) as err:
        c.validate(command)
    assert err.value.errno == errno.EINVAL
    return err.value.message


def test_valid_channels_and_msgchans_pass() -> None:
    c.validate(cmd(["A", "B_2"], [{"name": "MC", "uri": "local:///tmp/x"}]))


@pytest.mark.parametrize("name", ["", "A=B", "1A", "A-B", "A B"])
def test_channel_name_must_be_a_variable_name(name: str) -> None:
    assert "invalid channel name" in einval(cmd([name]))


@pytest.mark.parametrize("name", ["stdin", "stdout", "stderr"])
def test_channel_name_must_not_be_a_stdio_stream(name: str) -> None:
    einval(cmd([name]))


def test_duplicate_channel_is_refused() -> None:
    assert "already in use" in einval(cmd(["A", "A"]))


def test_msgchan_and_channel_must_not_share_a_name() -> None:
    einval(cmd(["A"], [{"name": "A", "uri": "local:///tmp/x"}]))


def test_too_many_channels_are_refused() -> None:
    assert "too many channels" in einval(cmd([f"C{i}" for i in range(65)]))


@pytest.mark.parametrize("uri", ["tcp://h:1", "ssh://h/p", "/tmp/x", "local://"])
def test_msgchan_uri_must_be_local(uri: str) -> None:
    einval(cmd(msgchans=[{"name": "MC", "uri": uri}]))


def test_flux_core_msgchan_spelling_is_parsed() -> None:
    command = parse_command(
        {"cmdline": ["true"], "env": {}, "msgchan": [{"name": "MC", "uri": "local:///s"}]}
    )
    assert [(m.name, m.uri) for m in command.msgchans] == [("MC", "local:///s")]


def test_channel_buffer_defaults_to_4096() -> None:
    assert c.channel_bufsize(cmd(["A"]), "A") == 4096


@pytest.mark.parametrize(("raw", "size"), [("8192", 8192), ("64k", 65536), ("1M", 1 << 20)])
def test_channel_buffer_comes_from_its_option(raw: str, size: int) -> None:
    assert c.channel_bufsize(cmd(["A"], opts={"A_BUFSIZE": raw}), "A") == size


@pytest.mark.parametrize("raw", ["0", "-1", "lots", "k"])
def test_bad_channel_buffer_option_is_einval(raw: str) -> None:
    einval(cmd(["A"], opts={"A_BUFSIZE": raw}))


def test_sigpipe_is_ignored_by_default_as_systemd_does() -> None:
    assert c.ignores_sigpipe([]) is True


def test_sigpipe_follows_the_last_ignoresigpipe_property() -> None:
    props = [("IgnoreSIGPIPE", Variant("b", True)), ("IgnoreSIGPIPE", Variant("b", False))]
    assert c.ignores_sigpipe(props) is False


def test_helper_argv_runs_python_isolated_then_the_command() -> None:
    argv = c.helper_argv("/bin/echo", "echo", ["a", "$b"])
    assert argv[:3] == [sys.executable, "-I", "-S"]
    assert argv[3] in (c.HELPER_PATH, c.helper_script())
    assert argv[4:] == ["/bin/echo", "echo", "a", "$b"]


def test_fresh_bytecode_is_recognised(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("x = 1\n")
    pyc = str(tmp_path / "m.pyc")
    py_compile.compile(str(src), cfile=pyc, doraise=True)
    assert c.bytecode_is_fresh(pyc, str(src))


def test_bytecode_of_a_changed_source_is_stale(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("x = 1\n")
    pyc = str(tmp_path / "m.pyc")
    py_compile.compile(str(src), cfile=pyc, doraise=True)
    src.write_text("x = 22\n")
    os.utime(src, (1, 1))
    assert not c.bytecode_is_fresh(pyc, str(src))


def test_missing_bytecode_is_not_fresh(tmp_path: Path) -> None:
    assert not c.bytecode_is_fresh(str(tmp_path / "none.pyc"), str(tmp_path / "none.py"))


def test_msgchan_sockets_live_beside_the_servers_socket() -> None:
    assert msgchan.socket_dir("local:///run/sdexec/local") == "/run/sdexec/local.msgchan"


def test_msgchan_target_of_a_local_uri_is_its_path() -> None:
    assert msgchan.target_path("local:///tmp/s") == "/tmp/s"
