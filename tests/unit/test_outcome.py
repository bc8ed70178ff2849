"""Outcomes of a command on many ranks: classification, exit codes, summary lines."""

from __future__ import annotations

import errno

from sdexec.cluster.outcome import Kind, Outcome, exit_code, from_status, summary

OK = Outcome(Kind.OK)
UNREACHABLE = Outcome(Kind.UNREACHABLE, errno.ECONNREFUSED, "connection refused")


def test_exit_0_is_ok() -> None:
    assert from_status(0) == OK


def test_exit_n() -> None:
    assert from_status(3 << 8) == Outcome(Kind.EXIT, 3)


def test_signal_with_name() -> None:
    o = from_status(9)
    assert (o.kind, o.code, o.label) == (Kind.SIGNAL, 9, "signal 9 (SIGKILL)")


def test_core_dump_is_a_signal() -> None:
    o = from_status(11 | 0x80)
    assert o.kind is Kind.SIGNAL
    assert "core dumped" in o.detail


def test_exit_codes_per_kind() -> None:
    assert Outcome(Kind.EXIT, 3).exit_code() == 3
    assert Outcome(Kind.SIGNAL, 15).exit_code() == 143
    assert Outcome(Kind.TIMEOUT, 15).exit_code() == 124
    assert Outcome(Kind.UNKILLABLE, 9).exit_code() == 137
    assert UNREACHABLE.exit_code() == 68
    assert Outcome(Kind.ERROR, errno.ENOENT).exit_code() == 127
    assert Outcome(Kind.ERROR, errno.EACCES).exit_code() == 126
    assert Outcome(Kind.ERROR, errno.EPROTO).exit_code() == 125


def test_exit_code_is_the_highest() -> None:
    assert exit_code([OK, Outcome(Kind.EXIT, 3), Outcome(Kind.EXIT, 1)]) == 3


def test_unreachable_is_68_only_when_it_is_the_worst() -> None:
    assert exit_code([OK, UNREACHABLE, Outcome(Kind.EXIT, 1)]) == 68
    assert exit_code([UNREACHABLE, Outcome(Kind.EXIT, 99)]) == 99


def test_no_outcome_is_0() -> None:
    assert exit_code([]) == 0


def test_summary_groups_ranks_in_idset_form() -> None:
    outcomes = {0: OK, 1: OK, 2: OK, 3: Outcome(Kind.EXIT, 1), 5: OK, 7: Outcome(Kind.EXIT, 1)}
    assert summary(outcomes) == ["[0-2,5]: ok", "[3,7]: exit 1"]


def test_summary_lists_unreachable_ranks_last_and_apart() -> None:
    outcomes = {0: UNREACHABLE, 1: Outcome(Kind.EXIT, 2), 2: UNREACHABLE}
    assert summary(outcomes) == [
        "1: exit 2",
        "0: unreachable: connection refused",
        "2: unreachable: connection refused",
    ]


def test_error_label_carries_the_reason() -> None:
    assert Outcome(Kind.ERROR, errno.ENOENT, "x: not found").label == "error: x: not found"


def test_a_failed_request_is_125_whatever_its_errno() -> None:
    from sdexec.cluster.outcome import Kind, Outcome

    assert Outcome(Kind.FAILED, errno.ENOENT, "process x not found").exit_code() == 125
    assert Outcome(Kind.ERROR, errno.ENOENT, "x: not found").exit_code() == 127


def test_exec_errors_map_as_a_shell_does() -> None:
    from sdexec.client.exec import exec_error_exit_code

    assert exec_error_exit_code(errno.ENOENT) == 127
    assert exec_error_exit_code(errno.ENOEXEC) == 126
    assert exec_error_exit_code(errno.EACCES) == 126
    assert exec_error_exit_code(errno.ENOENT, "working directory /x: No such file") == 125
    assert exec_error_exit_code(errno.EIO) == 125
