"""The sans-IO exec session: payloads, responses, io encoding, credit, exit codes."""

from __future__ import annotations

import base64
import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.client.exec import (
    DEFAULT_STDIN_BUFSIZE,
    ExecSession,
    StdinCredit,
    borrowable_credit,
    build_command,
    encode_io,
    exit_code,
    reason_text,
)


def session(**kw: object) -> ExecSession:
    return ExecSession(build_command(["cat"], env={"A": "1"}, cwd="/tmp"), **kw)  # type: ignore[arg-type]


# --- exit codes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(0, 0), (1 << 8, 1), (203 << 8, 203), (255 << 8, 255), (9, 137), (15, 143), (11 | 0x80, 139)],
)
def test_exit_code_maps_wait_status_like_a_shell(status: int, code: int) -> None:
    assert exit_code(status) == code


# --- request payload ----------------------------------------------------------------------


def test_request_payload_has_the_rfc42_shape() -> None:
    cmd = build_command(
        ["ls", "-l"], env={"PATH": "/bin"}, cwd="/home", opts={"x": "y"}, label="job"
    )
    assert ExecSession(cmd).request() == {
        "cmd": {
            "cwd": "/home",
            "cmdline": ["ls", "-l"],
            "env": {"PATH": "/bin"},
            "opts": {"x": "y"},
            "channels": [],
            "label": "job",
        },
        "flags": 11,
        "local_flags": 0,
    }


def test_command_without_cwd_or_label_omits_them() -> None:
    cmd = build_command(["true"], env={})
    assert "cwd" not in cmd and "label" not in cmd


@pytest.mark.parametrize(("cmdline", "label"), [([], None), (["true"], "")])
def test_command_rejects_an_empty_cmdline_or_label(cmdline: list[str], label: str | None) -> None:
    with pytest.raises(SdexecError) as info:
        build_command(cmdline, env={}, label=label)
    assert info.value.errno == errno.EINVAL


# --- io encoding ----------------------------------------------------------------------------


def test_utf8_data_travels_as_text() -> None:
    assert encode_io("stdin", "héllo\n".encode()) == {
        "stream": "stdin",
        "rank": "0",
        "data": "héllo\n",
    }


@pytest.mark.parametrize("data", [b"\xff\xfe", b"a\x00b", "é".encode()[:1]])
def test_non_utf8_or_nul_data_travels_as_base64(data: bytes) -> None:
    io = encode_io("stdin", data)
    assert io["encoding"] == "base64"
    assert base64.b64decode(io["data"]) == data


def test_eof_io_has_no_data() -> None:
    assert encode_io("stdin", eof=True) == {"stream": "stdin", "rank": "0", "eof": True}


# --- credit -------------------------------------------------------------------------------------


def test_credit_may_borrow_4096_before_the_first_add_credit() -> None:
    credit = StdinCredit()
    assert credit.available == DEFAULT_STDIN_BUFSIZE
    credit.charge(4000)
    assert credit.available == 96
    assert credit.balance == -4000


def test_the_first_add_credit_repays_the_loan() -> None:
    credit = StdinCredit()
    credit.charge(4096)
    credit.add(4096)  # the server's whole buffer
    assert credit.available == 0
    credit.add(100)
    assert credit.available == 100


def test_writing_beyond_the_credit_is_refused() -> None:
    credit = StdinCredit()
    with pytest.raises(SdexecError):
        credit.charge(4097)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 10000)),
            st.tuples(st.just("write"), st.integers(1, 20000)),
        ),
        max_size=50,
    )
)
def test_writes_never_exceed_the_borrowed_4096_plus_credits(ops: list[tuple[str, int]]) -> None:
    credit = StdinCredit()
    credits = 0
    sent = 0
    for op, n in ops:
        if op == "add":
            credit.add(n)
            credits += n
        else:
            chunk = min(n, credit.available)
            credit.charge(chunk)
            sent += chunk
        assert sent <= DEFAULT_STDIN_BUFSIZE + credits
        if credits:
            assert sent <= max(credits, DEFAULT_STDIN_BUFSIZE)
    assert credit.sent == sent


def test_a_smaller_stdin_bufsize_option_limits_the_loan() -> None:
    assert borrowable_credit({}) == 4096
    assert borrowable_credit({"stdin_BUFSIZE": "1024"}) == 1024
    assert borrowable_credit({"stdin_BUFSIZE": "1k"}) == 1024
    assert borrowable_credit({"stdin_BUFSIZE": "1m"}) == 4096
    cmd = build_command(["cat"], env={}, opts={"stdin_BUFSIZE": "10"})
    assert ExecSession(cmd).credit.available == 10


# --- responses -----------------------------------------------------------------------------


def test_responses_update_the_session() -> None:
    s = session()
    ev = s.feed({"type": "started", "pid": 42})
    assert ev is not None and ev.kind == "started" and s.pid == 42
    ev = s.feed({"type": "add-credit", "channels": {"stdin": 8192}})
    assert ev is not None and ev.credit == 8192 and s.credit.available == 8192
    ev = s.feed(
        {"type": "output", "pid": 42, "io": {"stream": "stdout", "rank": "0", "data": "hi"}}
    )
    assert ev is not None and (ev.stream, ev.data, ev.eof) == ("stdout", b"hi", False)
    ev = s.feed({"type": "output", "io": {"stream": "stdout", "rank": "0", "eof": True}})
    assert ev is not None and ev.eof and s.eof_streams == {"stdout"}
    assert s.feed({"type": "stopped"}) is not None and s.stopped
    ev = s.feed({"type": "finished", "status": 256})
    assert ev is not None and ev.status == 256
    assert s.finish() == 256


def test_unknown_response_types_are_ignored() -> None:
    assert session().feed({"type": "future-thing"}) is None


@pytest.mark.parametrize(
    "resp",
    [
        {"type": "started"},
        {"type": "started", "pid": "12"},
        {"type": "finished", "status": True},
        {"type": "output", "io": "x"},
        {"type": "output", "io": {"data": "x"}},
        {"type": "add-credit", "channels": {"stdin": -1}},
        {"type": "add-credit"},
    ],
)
def test_malformed_responses_are_eproto(resp: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        session().feed(resp)


def test_a_stream_that_ends_without_finished_is_eproto() -> None:
    s = session()
    s.feed({"type": "started", "pid": 1})
    with pytest.raises(ProtocolError):
        s.finish()


def test_write_payloads_name_the_exec_matchtag_and_charge_credit() -> None:
    s = session()
    assert s.write_payload(7, b"abc") == {
        "matchtag": 7,
        "io": {"stream": "stdin", "rank": "0", "data": "abc"},
    }
    assert s.credit.available == 4093
    assert s.eof_payload(7) == {"matchtag": 7, "io": {"stream": "stdin", "rank": "0", "eof": True}}
    with pytest.raises(SdexecError) as info:
        s.write_payload(7, b"late")
    assert info.value.errno == errno.EPIPE


def test_finished_with_a_reason_keeps_it_and_names_it_for_a_person() -> None:
    ended = session()
    ended.feed({"type": "started", "pid": 7})
    ended.feed({"type": "finished", "pid": 7, "status": 9, "reason": "oom-kill"})
    assert ended.reason == "oom-kill"
    assert reason_text("oom-kill").startswith("oom-kill (killed by the kernel's OOM killer")
    assert reason_text("something-new") == "something-new"
    plain = session()
    plain.feed({"type": "started", "pid": 7})
    plain.feed({"type": "finished", "pid": 7, "status": 9})
    assert plain.reason is None
