"""RFC 42 request schemas and response builders (sdexec.proto.rfc42)."""

from __future__ import annotations

import base64
import errno
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.base.errors import SdexecError
from sdexec.proto import rfc42
from sdexec.proto.rfc42 import (
    DEFAULT_STDIN_BUFSIZE,
    ExecFlag,
    LocalFlag,
    MsgChan,
    io_object,
    parse_exec,
    parse_kill,
    parse_target,
    parse_write,
)


def command(**overrides: Any) -> dict[str, Any]:
    cmd: dict[str, Any] = {
        "cmdline": ["/bin/echo", "hello"],
        "env": {"PATH": "/usr/bin:/bin"},
        "opts": {},
        "channels": [],
    }
    cmd.update(overrides)
    return cmd


def exec_payload(**cmd_overrides: Any) -> dict[str, Any]:
    return {"cmd": command(**cmd_overrides), "flags": 3}


def errnum_of(fn: Callable[[Any], object], payload: Any) -> int:
    with pytest.raises(SdexecError) as info:
        fn(payload)
    assert info.value.errno is not None
    return info.value.errno


def without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


# --- exec ---------------------------------------------------------------------------------


def test_parse_exec_valid_request() -> None:
    req = parse_exec(
        {
            "cmd": command(cwd="/tmp", label="job1"),
            "flags": int(ExecFlag.STDOUT | ExecFlag.STDERR | ExecFlag.WAITABLE),
            "local_flags": int(LocalFlag.NO_SETPGRP),
        }
    )
    assert req.cmd.cmdline == ["/bin/echo", "hello"]
    assert req.cmd.env == {"PATH": "/usr/bin:/bin"}
    assert req.cmd.opts == {}
    assert req.cmd.channels == []
    assert req.cmd.cwd == "/tmp"
    assert req.cmd.label == "job1"
    assert req.flags == ExecFlag.STDOUT | ExecFlag.STDERR | ExecFlag.WAITABLE
    assert req.local_flags == LocalFlag.NO_SETPGRP


def test_parse_exec_optional_fields_default_to_none() -> None:
    req = parse_exec(exec_payload())
    assert req.cmd.cwd is None
    assert req.cmd.label is None
    assert req.cmd.msgchans == []
    assert req.local_flags == LocalFlag(0)


def test_parse_exec_accepts_flux_core_msgchan_key() -> None:
    req = parse_exec(exec_payload(msgchan=[{"name": "PMI_FD", "uri": "interthread://x"}]))
    assert req.cmd.msgchans == [MsgChan("PMI_FD", "interthread://x")]


def test_parse_exec_accepts_rfc42_msgchans_key() -> None:
    req = parse_exec(exec_payload(msgchans=[{"name": "PMI_FD", "uri": "interthread://y"}]))
    assert req.cmd.msgchans == [MsgChan("PMI_FD", "interthread://y")]


def test_parse_exec_msgchans_wins_over_msgchan() -> None:
    req = parse_exec(
        exec_payload(
            msgchans=[{"name": "a", "uri": "u1"}],
            msgchan=[{"name": "b", "uri": "u2"}],
        )
    )
    assert [c.name for c in req.cmd.msgchans] == ["a"]


def test_parse_exec_null_msgchans_is_empty() -> None:
    assert parse_exec(exec_payload(msgchans=None)).cmd.msgchans == []


def test_parse_exec_missing_opts_and_channels_are_empty() -> None:
    cmd = without(without(command(), "opts"), "channels")
    req = parse_exec({"cmd": cmd, "flags": 0})
    assert req.cmd.opts == {}
    assert req.cmd.channels == []


def test_parse_exec_accepts_every_known_flag_bit() -> None:
    req = parse_exec({"cmd": command(), "flags": 0x1F, "local_flags": 0x7})
    assert int(req.flags) == 0x1F
    assert int(req.local_flags) == 0x7


@pytest.mark.parametrize(
    ("flags", "local_flags"), [(0x20, 0), (-1, 0), (2**63, 0), (0, 8), (0, -1), (0, 2**63)]
)
def test_parse_exec_unknown_flag_bits_are_einval(flags: int, local_flags: int) -> None:
    payload = {"cmd": command(), "flags": flags, "local_flags": local_flags}
    assert errnum_of(parse_exec, payload) == errno.EINVAL


@pytest.mark.parametrize("key", ["cmd", "flags"])
def test_parse_exec_missing_required_key_is_eproto(key: str) -> None:
    assert errnum_of(parse_exec, without(exec_payload(), key)) == errno.EPROTO


@pytest.mark.parametrize("key", ["cmdline", "env"])
def test_parse_exec_missing_required_cmd_key_is_eproto(key: str) -> None:
    payload = {"cmd": without(command(), key), "flags": 0}
    assert errnum_of(parse_exec, payload) == errno.EPROTO


def test_parse_exec_empty_cmdline_is_eproto() -> None:
    assert errnum_of(parse_exec, exec_payload(cmdline=[])) == errno.EPROTO


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cmdline", "/bin/true"),
        ("cmdline", ["/bin/true", 1]),
        ("cmdline", [None]),
        ("env", ["PATH=/bin"]),
        ("env", {"N": 1}),
        ("env", None),
        ("opts", {"stdin_BUFSIZE": 4096}),
        ("opts", []),
        ("channels", "FD"),
        ("channels", [3]),
        ("cwd", 7),
        ("label", 7),
        ("label", True),
        ("msgchans", {"name": "x", "uri": "y"}),
        ("msgchans", ["x"]),
        ("msgchans", [{"name": "x"}]),
        ("msgchans", [{"name": 1, "uri": "y"}]),
    ],
)
def test_parse_exec_mistyped_cmd_field_is_eproto(key: str, value: Any) -> None:
    assert errnum_of(parse_exec, exec_payload(**{key: value})) == errno.EPROTO


@pytest.mark.parametrize("cmd", ["ls", ["ls"], 1, None])
def test_parse_exec_cmd_that_is_not_an_object_is_eproto(cmd: Any) -> None:
    assert errnum_of(parse_exec, {"cmd": cmd, "flags": 0}) == errno.EPROTO


@pytest.mark.parametrize("flags", ["3", 3.0, None, [3]])
def test_parse_exec_mistyped_flags_is_eproto(flags: Any) -> None:
    assert errnum_of(parse_exec, {"cmd": command(), "flags": flags}) == errno.EPROTO


@pytest.mark.parametrize("value", [True, False])
def test_parse_exec_bool_flags_are_not_ints(value: bool) -> None:
    assert errnum_of(parse_exec, {"cmd": command(), "flags": value}) == errno.EPROTO


def test_parse_exec_bool_local_flags_are_not_ints() -> None:
    payload = {"cmd": command(), "flags": 0, "local_flags": True}
    assert errnum_of(parse_exec, payload) == errno.EPROTO


def test_parse_exec_empty_label_is_einval() -> None:
    assert errnum_of(parse_exec, exec_payload(label="")) == errno.EINVAL


# --- stdin_BUFSIZE option -------------------------------------------------------------------


def options(**opts: str) -> rfc42.ExecOptions:
    return parse_exec(exec_payload(opts=opts)).options


def einval(**opts: str) -> str:
    """The message of the EINVAL that ``opts`` get at parse time."""
    with pytest.raises(SdexecError) as info:
        parse_exec(exec_payload(opts=opts))
    assert info.value.errno == errno.EINVAL
    return info.value.message


def test_stdin_bufsize_defaults_to_4096() -> None:
    assert options().stdin_bufsize == DEFAULT_STDIN_BUFSIZE == 4096


@pytest.mark.parametrize(
    ("raw", "size"),
    [("1", 1), ("8192", 8192), ("4k", 4096), ("4K", 4096), ("2m", 2 << 20), ("1G", 1 << 30)],
)
def test_stdin_bufsize_parses_sizes_with_suffixes(raw: str, size: int) -> None:
    assert options(stdin_BUFSIZE=raw).stdin_bufsize == size


@pytest.mark.parametrize("raw", ["0", "-1", "", "abc", "4x", "k", "1.5k"])
def test_stdin_bufsize_invalid_value_is_einval(raw: str) -> None:
    assert "stdin_BUFSIZE" in einval(stdin_BUFSIZE=raw)


# --- kill and targets -----------------------------------------------------------------------


def test_parse_kill_by_pid() -> None:
    req = parse_kill({"pid": 123, "signum": 15})
    assert (req.target.pid, req.target.label, req.signum) == (123, None, 15)
    assert str(req.target) == "123"


def test_parse_kill_label_wins_over_pid() -> None:
    req = parse_kill({"pid": 123, "label": "job1", "signum": 9})
    assert req.target.label == "job1"
    assert str(req.target) == "job1"


def test_parse_kill_label_without_pid() -> None:
    req = parse_kill({"label": "job1", "signum": 9})
    assert req.target.label == "job1"
    assert req.target.pid == -1


@pytest.mark.parametrize("signum", [1, 9, 15, 64])
def test_parse_kill_accepts_signals_1_to_64(signum: int) -> None:
    assert parse_kill({"pid": 1, "signum": signum}).signum == signum


@pytest.mark.parametrize("signum", [0, -1, 65, 1000, 2**63])
def test_parse_kill_bad_signum_is_einval(signum: int) -> None:
    assert errnum_of(parse_kill, {"pid": 1, "signum": signum}) == errno.EINVAL


@pytest.mark.parametrize(
    "payload",
    [
        {"signum": 9},
        {"pid": 1},
        {"pid": "1", "signum": 9},
        {"pid": 1, "signum": "9"},
        {"pid": True, "signum": 9},
        {"pid": 1, "signum": True},
        {"label": 3, "signum": 9},
    ],
)
def test_parse_kill_missing_or_mistyped_field_is_eproto(payload: dict[str, Any]) -> None:
    assert errnum_of(parse_kill, payload) == errno.EPROTO


def test_parse_kill_empty_label_is_einval() -> None:
    assert errnum_of(parse_kill, {"label": "", "signum": 9}) == errno.EINVAL


def test_parse_target_null_label_falls_back_to_pid() -> None:
    target = parse_target({"pid": 5, "label": None}, "wait")
    assert (target.pid, target.label) == (5, None)


# --- write --------------------------------------------------------------------------------


def write_payload(**io: Any) -> dict[str, Any]:
    return {"matchtag": 7, "io": {"stream": "stdin", "rank": "0", **io}}


def test_parse_write_utf8_data() -> None:
    req = parse_write(write_payload(data="h\u00e9llo \u2603"))
    assert req.matchtag == 7
    assert req.stream == "stdin"
    assert req.data == "h\u00e9llo \u2603".encode()
    assert req.eof is False


def test_parse_write_explicit_utf8_encoding() -> None:
    assert parse_write(write_payload(data="abc", encoding="UTF-8")).data == b"abc"


def test_parse_write_base64_data() -> None:
    raw = bytes(range(256))
    req = parse_write(write_payload(data=base64.b64encode(raw).decode(), encoding="base64"))
    assert req.data == raw


def test_parse_write_eof_without_data() -> None:
    req = parse_write(write_payload(eof=True))
    assert req.data == b""
    assert req.eof is True


def test_parse_write_bad_base64_is_eproto() -> None:
    payload = write_payload(data="not*base64!", encoding="base64")
    assert errnum_of(parse_write, payload) == errno.EPROTO


def test_parse_write_non_ascii_base64_is_eproto() -> None:
    payload = write_payload(data="\u00e9\u00e9\u00e9\u00e9", encoding="base64")
    assert errnum_of(parse_write, payload) == errno.EPROTO


def test_parse_write_unknown_encoding_is_eproto() -> None:
    assert errnum_of(parse_write, write_payload(data="x", encoding="rot13")) == errno.EPROTO


@pytest.mark.parametrize(
    "payload",
    [
        {"io": {"stream": "stdin"}},
        {"matchtag": 1},
        {"matchtag": "1", "io": {"stream": "stdin"}},
        {"matchtag": True, "io": {"stream": "stdin"}},
        {"matchtag": 1, "io": "data"},
        {"matchtag": 1, "io": {}},
        {"matchtag": 1, "io": {"stream": 0}},
        {"matchtag": 1, "io": {"stream": "stdin", "data": 5}},
        {"matchtag": 1, "io": {"stream": "stdin", "eof": 1}},
    ],
)
def test_parse_write_missing_or_mistyped_field_is_eproto(payload: dict[str, Any]) -> None:
    assert errnum_of(parse_write, payload) == errno.EPROTO


def test_write_with_lone_surrogate_is_an_errno_error() -> None:
    # JSON may carry "\ud800"; json.loads gives a str that cannot be UTF-8 encoded.
    with pytest.raises(SdexecError) as info:
        parse_write(write_payload(data="\ud800"))
    assert info.value.errno in (errno.EPROTO, errno.EINVAL)


# --- io objects ---------------------------------------------------------------------------


def test_io_object_valid_utf8_is_sent_as_text() -> None:
    io = io_object("stdout", "0", "caf\u00e9\n".encode())
    assert io == {"stream": "stdout", "rank": "0", "data": "caf\u00e9\n"}


def test_io_object_invalid_utf8_is_sent_as_base64() -> None:
    io = io_object("stderr", "3", b"\xff\xfe\x00bin")
    assert io["encoding"] == "base64"
    assert base64.b64decode(io["data"]) == b"\xff\xfe\x00bin"
    assert (io["stream"], io["rank"]) == ("stderr", "3")


def test_io_object_eof_without_data() -> None:
    assert io_object("stdout", "0", b"", eof=True) == {
        "stream": "stdout",
        "rank": "0",
        "eof": True,
    }


def test_io_object_none_data_has_no_data_key() -> None:
    assert "data" not in io_object("stdout", "0", None)


def test_io_object_data_with_eof_carries_both() -> None:
    io = io_object("stdout", "0", b"last", eof=True)
    assert io["data"] == "last"
    assert io["eof"] is True


@given(st.binary(max_size=64))
def test_io_object_round_trips_through_parse_write(data: bytes) -> None:
    io = io_object("stdin", "0", data)
    assert parse_write({"matchtag": 1, "io": io}).data == data


@pytest.mark.parametrize(
    ("status", "words", "fields"),
    [
        (0, "exit 0", {"exit_code": 0}),
        (3 << 8, "exit 3", {"exit_code": 3}),
        (15, "signal 15 (SIGTERM)", {"signal": "SIGTERM"}),
        (11 | 0x80, "signal 11 (SIGSEGV), core dumped", {"signal": "SIGSEGV", "core_dumped": True}),
    ],
)
def test_wait_statuses_are_told_in_words(
    status: int, words: str, fields: dict[str, object]
) -> None:
    assert rfc42.describe_status(status) == words
    assert rfc42.status_fields(status) == fields


# --- options for output buffering and the stop timer -------------------------------------


def test_line_buffer_option_defaults_to_the_servers_choice() -> None:
    assert options().line_bufsize("stdout", True) == rfc42.DEFAULT_OUTPUT_BUFSIZE
    assert options().line_bufsize("stdout", False) is None
    assert options(stdout_LINE_BUFFER="FALSE").line_bufsize("stdout", True) is None
    assert options(stderr_LINE_BUFFER="true").line_bufsize("stderr", False) is not None


def test_line_buffer_option_must_be_true_or_false() -> None:
    assert "stdout_LINE_BUFFER" in einval(stdout_LINE_BUFFER="maybe")


def test_output_bufsize_option() -> None:
    assert options().output_bufsize["stdout"] == rfc42.DEFAULT_OUTPUT_BUFSIZE
    assert options(stdout_BUFSIZE="0").output_bufsize["stdout"] == rfc42.DEFAULT_OUTPUT_BUFSIZE
    assert options(stdout_BUFSIZE="64k").output_bufsize["stdout"] == 64 * 1024
    assert "stderr_BUFSIZE" in einval(stderr_BUFSIZE="lots")


def test_stop_timer_options() -> None:
    assert options().stop_timer == (None, 9)
    assert options(SDEXEC_STOP_TIMER_SEC="30", SDEXEC_STOP_TIMER_SIGNAL="10").stop_timer == (30, 10)
    assert options(SDEXEC_STOP_TIMER_SEC="").stop_timer == (0, 9)
    assert options(SDEXEC_STOP_TIMER_SEC="-1").stop_timer == (None, 9)
    assert "SDEXEC_STOP_TIMER_SEC" in einval(SDEXEC_STOP_TIMER_SEC="soon")
    assert "SDEXEC_STOP_TIMER_SIGNAL" in einval(SDEXEC_STOP_TIMER_SIGNAL="99")


def test_the_strict_option_is_yes_or_no_or_the_servers_default() -> None:
    assert options(SDEXEC_STRICT_PROPERTIES="yes").strict_properties is True
    assert options(SDEXEC_STRICT_PROPERTIES="no").strict_properties is False
    assert options().strict_properties is None
    assert "SDEXEC_STRICT_PROPERTIES" in einval(SDEXEC_STRICT_PROPERTIES="maybe")


def test_the_wait_scope_option_is_yes_or_no() -> None:
    assert options(**{rfc42.WAIT_SCOPE_OPTION: "yes"}).wait_scoped
    assert not options().wait_scoped
    assert rfc42.WAIT_SCOPE_OPTION in einval(**{rfc42.WAIT_SCOPE_OPTION: "later"})


def test_the_unit_name_option_gets_its_service_suffix() -> None:
    assert options(SDEXEC_NAME="job-1").unit_name == "job-1.service"
    assert options(SDEXEC_NAME="job-1.service").unit_name == "job-1.service"
    assert options(SDEXEC_NAME="").unit_name is None


def test_a_terminal_is_refused_with_channels_fallthrough_or_no_stdout() -> None:
    assert options(SDEXEC_PTY="100x40").winsize == (100, 40)
    assert options().winsize is None
    payload = exec_payload(opts={"SDEXEC_PTY": "80x24"}, channels=["A"])
    assert errnum_of(parse_exec, payload) == errno.EINVAL
    payload = {**exec_payload(opts={"SDEXEC_PTY": "80x24"}), "local_flags": 1}
    assert errnum_of(parse_exec, payload) == errno.EINVAL
    payload = {**exec_payload(opts={"SDEXEC_PTY": "80x24"}), "flags": 0}
    assert parse_exec(payload).options.winsize == (80, 24)  # background: a holder keeps it
    with pytest.raises(SdexecError) as info:
        parse_exec(payload, streaming=True)
    assert info.value.errno == errno.EINVAL


def test_a_streaming_exec_cannot_be_waitable() -> None:
    payload = {"cmd": command(), "flags": int(ExecFlag.WAITABLE)}
    assert parse_exec(payload).flags & ExecFlag.WAITABLE
    with pytest.raises(SdexecError) as info:
        parse_exec(payload, streaming=True)
    assert info.value.errno == errno.EINVAL
