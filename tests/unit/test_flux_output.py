"""Background output copied to the broker log (sdexec.flux.output), with a fake service."""

from __future__ import annotations

import json
import syslog
from types import SimpleNamespace
from typing import Any

from sdexec.flux.output import BackgroundOutput, display_name
from sdexec.systemd.journal import Journal


def proc(unit: str, label: str | None, argv0: str, background: bool = True) -> Any:
    cmd = SimpleNamespace(cmdline=[argv0, "x"])
    return SimpleNamespace(unit=unit, label=label, cmd=cmd, pid=42, background=background)


def forwarder(*procs: Any) -> tuple[BackgroundOutput, list[tuple[int, str]]]:
    lines: list[tuple[int, str]] = []
    service = SimpleNamespace(by_unit={p.unit: p for p in procs})
    fwd = BackgroundOutput(service, Journal.for_mode("user"), lambda lvl, t: lines.append((lvl, t)))  # type: ignore[arg-type]
    return fwd, lines


def record(**fields: object) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def test_stdout_and_stderr_lines_of_a_background_process() -> None:
    fwd, lines = forwarder(proc("a.service", "job1", "/bin/sh"))
    fwd.line(record(MESSAGE="hello", PRIORITY="6", _SYSTEMD_USER_UNIT="a.service"))
    fwd.line(record(MESSAGE="oops", PRIORITY="3", _SYSTEMD_UNIT="a.service"))
    assert lines == [(syslog.LOG_INFO, "job1[42]: hello"), (syslog.LOG_ERR, "job1[42]: oops")]


def test_bytes_messages_are_decoded() -> None:
    fwd, lines = forwarder(proc("a.service", None, "/usr/bin/tool"))
    fwd.line(record(MESSAGE=[104, 105, 255], PRIORITY="6", _SYSTEMD_USER_UNIT="a.service"))
    assert lines == [(syslog.LOG_INFO, "tool[42]: hi\ufffd")]


def test_other_units_foreground_processes_and_junk_are_ignored() -> None:
    fwd, lines = forwarder(proc("fg.service", None, "cat", background=False))
    fwd.line(record(MESSAGE="x", PRIORITY="6", _SYSTEMD_USER_UNIT="fg.service"))
    fwd.line(record(MESSAGE="x", PRIORITY="6", _SYSTEMD_USER_UNIT="other.service"))
    fwd.line(b"not json\n")
    fwd.line(b"[1, 2]\n")
    assert lines == []


def test_display_name_is_label_else_command_else_unit() -> None:
    assert display_name(proc("u.service", "lbl", "/bin/sh")) == "lbl"
    assert display_name(proc("u.service", None, "/bin/sh")) == "sh"
    assert display_name(proc("u.service", None, "")) == "u.service"
