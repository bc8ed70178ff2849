"""Fan-out pieces that need no event loop: line labels and per-rank commands."""

from __future__ import annotations

from sdexec.cli.fanout import rank_command
from sdexec.cluster.fanout import LineLabeler
from sdexec.cluster.hosts import Host


def test_complete_lines_are_labelled_with_the_rank() -> None:
    assert LineLabeler().feed(3, "stdout", b"a\nb\n") == b"3: a\n3: b\n"


def test_partial_line_waits_for_its_end() -> None:
    lab = LineLabeler()
    assert lab.feed(1, "stdout", b"hel") == b""
    assert lab.feed(2, "stdout", b"other\n") == b"2: other\n"
    assert lab.feed(1, "stdout", b"lo\n") == b"1: hello\n"


def test_partial_line_is_completed_at_eof() -> None:
    lab = LineLabeler()
    lab.feed(0, "stderr", b"no newline")
    assert lab.feed(0, "stderr", b"", eof=True) == b"0: no newline\n"


def test_streams_are_buffered_apart() -> None:
    lab = LineLabeler()
    lab.feed(0, "stdout", b"out")
    assert lab.feed(0, "stderr", b"err\n") == b"0: err\n"


def test_rank_command_adds_sdexec_rank_without_touching_the_original() -> None:
    cmd = {"cmdline": ["true"], "env": {"A": "1"}}
    out = rank_command(cmd, Host(5, "local:///x", "n5"))
    assert out["env"] == {"A": "1", "SDEXEC_RANK": "5"}
    assert cmd["env"] == {"A": "1"}
