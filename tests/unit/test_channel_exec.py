"""The exec helper's pure parts (sdexec.unit.channel_exec): control message, fds, environment."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.unit import channel_exec as h

names = st.lists(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), max_size=h.MAX_CHANNELS
)


@given(names, st.booleans(), st.booleans())
def test_header_round_trips(chans: list[str], ignore: bool, terminal: bool) -> None:
    assert h.decode_header(h.encode_header(chans, ignore, terminal)) == (chans, ignore, terminal)


def test_a_terminal_is_a_flag_after_sigpipes() -> None:
    assert h.encode_header([], True, terminal=True) == h.MAGIC + b"\0" + b"1t"
    with pytest.raises(h.HelperError):
        h.decode_header(h.MAGIC + b"\x00t1")


def test_header_without_channels_is_magic_and_flag() -> None:
    assert h.encode_header([], False) == h.MAGIC + b"\0" + b"0"


def test_header_with_wrong_magic_is_refused() -> None:
    with pytest.raises(h.HelperError):
        h.decode_header(b"something-else\x001\x00CH")


def test_header_with_empty_name_is_refused() -> None:
    with pytest.raises(h.HelperError):
        h.decode_header(h.MAGIC + b"\x001\x00\x00B")


def test_header_with_bad_sigpipe_field_is_refused() -> None:
    with pytest.raises(h.HelperError):
        h.decode_header(h.MAGIC + b"\x00x\x00CH")


@pytest.mark.parametrize("bad", ["", "A=B", "A\0B"])
def test_encode_refuses_names_that_cannot_be_variables(bad: str) -> None:
    with pytest.raises(ValueError):
        h.encode_header([bad], True)


def test_encode_refuses_too_many_channels() -> None:
    with pytest.raises(ValueError):
        h.encode_header([f"C{i}" for i in range(h.MAX_CHANNELS + 1)], True)


def test_unpack_fds_reads_native_ints() -> None:
    payload = b"".join(n.to_bytes(4, sys.byteorder, signed=True) for n in (7, 8, 1000))
    assert h.unpack_fds(payload) == [7, 8, 1000]


def test_unpack_fds_ignores_a_partial_trailing_int() -> None:
    assert h.unpack_fds((5).to_bytes(4, sys.byteorder) + b"\x01\x02") == [5]


def test_channels_get_fds_from_three_in_order() -> None:
    assert h.channel_fds(3) == [3, 4, 5]


def test_no_channels_get_no_fds() -> None:
    assert h.channel_fds(0) == []


def test_environment_keeps_the_initial_entries_in_order() -> None:
    env = h.exec_environment(b"PATH=/bin\0HOME=/root\0", {})
    assert list(env.items()) == [(b"PATH", b"/bin"), (b"HOME", b"/root")]


def test_environment_adds_each_channel_as_its_fd_number() -> None:
    env = h.exec_environment(b"PATH=/bin\0", {"A": 3, "B": 4})
    assert (env[b"A"], env[b"B"]) == (b"3", b"4")


def test_channel_variable_replaces_an_existing_one() -> None:
    assert h.exec_environment(b"A=old\0", {"A": 3})[b"A"] == b"3"


def test_environment_first_duplicate_wins_like_getenv() -> None:
    assert h.exec_environment(b"X=1\0X=2\0", {})[b"X"] == b"1"


def test_environment_drops_entries_execve_cannot_pass() -> None:
    assert h.exec_environment(b"noequals\0=empty\0OK=1\0", {}) == {b"OK": b"1"}


def test_environment_keeps_values_with_equals_and_odd_bytes() -> None:
    assert h.exec_environment(b"V=a=b\xff\0", {})[b"V"] == b"a=b\xff"


@pytest.mark.parametrize(("errnum", "code"), [(2, 127), (20, 127), (13, 126), (8, 126)])
def test_exit_code_for_exec_errors_is_a_shells(errnum: int, code: int) -> None:
    assert h.exit_code_for(errnum) == code
