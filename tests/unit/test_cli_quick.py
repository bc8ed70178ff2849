"""sdexec.cli.quick: whatever it accepts, argparse reads the same way."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.cli import parser as cli_parser
from sdexec.cli import quick


def full(argv: list[str]) -> dict[str, Any] | None:
    """What the argparse path makes of ``sdexec exec ARGV``; None for a usage error."""
    try:
        args, many = cli_parser.parse(["exec", *argv])
    except SystemExit:
        return None
    return None if many else vars(args)


def exec_actions() -> list[argparse.Action]:
    _, subs = cli_parser.build_parser()
    return [a for a in subs["exec"]._actions if a.option_strings]


def test_quick_tables_name_the_same_attributes_as_the_parser() -> None:
    known = quick._FLAGS | quick._VALUES | quick._NAME_VALUES
    for action in exec_actions():
        for option in action.option_strings:
            if option in known:
                assert known[option] == action.dest, option


def test_options_the_quick_path_does_not_know_go_to_argparse() -> None:
    known = quick._FLAGS | quick._VALUES | quick._NAME_VALUES
    for action in exec_actions():
        for option in action.option_strings:
            if option not in known:
                assert quick.parse_exec([option, "0", "true"]) is None, option


@pytest.mark.parametrize(
    "argv",
    [
        ["true"],
        ["--", "true"],
        ["-n", "--", "/bin/true"],
        ["--bg", "--waitable", "--label", "job", "--", "sleep", "1"],
        ["-d", "/tmp", "--env", "A=1", "--env=B=", "-p", "MemoryMax=1G", "ls", "-l"],
        ["--uri=local:///x", "--setopt", "stdin_BUFSIZE=1m", "cat"],
        ["--sign", "--sign-mechanism", "none", "--munge-socket", "/m", "id"],
        ["--label", "a", "--label", "b", "true"],
        ["--", "--", "x"],
        ["-n", "--", "-n"],
        ["ls", "--bg"],
        [""],
        ["--cwd=", "pwd"],
        ["-", "true"],
    ],
)
def test_common_command_lines_take_the_quick_path_and_agree(argv: list[str]) -> None:
    got = quick.parse_exec(argv)
    assert got is not None
    assert vars(got) == full(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--"],
        ["-h"],
        ["--help", "x"],
        ["-r", "all", "true"],
        ["-x", "1", "true"],
        ["-nl", "true"],
        ["-d/tmp", "true"],
        ["--wait", "true"],  # an abbreviation: argparse's business
        ["--label", "", "true"],
        ["--label", "-x", "true"],
        ["--env", "NOEQUALS", "true"],
        ["--env", "=v", "true"],
        ["--sign-mechanism", "kerberos", "true"],
        ["--bg=yes", "true"],
        ["--label"],
    ],
)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert quick.parse_exec(argv) is None


words = st.sampled_from(
    [
        "--", "-", "-n", "--no-stdin", "-l", "--bg", "--waitable", "--sign", "--no-sign",
        "--label", "--label=", "--label=x", "-d", "--cwd", "--cwd=/", "--uri", "--hosts",
        "--env", "--env=A=1", "-p", "--property", "--setopt", "--sign-mechanism",
        "--munge-socket", "-r", "-x", "-h", "--wa", "-nl", "A=1", "=1", "none", "munge",
        "x", "", "true", "-1", "a b", "-d/x",
    ]
)  # fmt: skip


@given(st.lists(words, max_size=8))
def test_generated_command_lines_agree_whenever_quick_accepts(argv: list[str]) -> None:
    got = quick.parse_exec(argv)
    if got is not None:
        assert vars(got) == full(argv)
