"""structlog events to the broker log (sdexec.flux.brokerlog), with a fake handle."""

from __future__ import annotations

import syslog
from collections.abc import Iterator

import pytest
import structlog

from sdexec.flux import brokerlog


class Handle:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def log(self, level: int, text: str) -> None:
        self.lines.append((level, text))


@pytest.fixture
def handle() -> Iterator[Handle]:
    h = Handle()
    brokerlog.configure(h, "debug")
    yield h
    structlog.reset_defaults()


def test_events_become_one_line_at_their_syslog_level(handle: Handle) -> None:
    log = structlog.get_logger("t")
    log.info("exec", argv=["sleep", "1"], unit="u.service", pid=7)
    log.warning("odd", reason="two words")
    log.error("bad", text="")
    assert handle.lines == [
        (syslog.LOG_INFO, "exec argv=['sleep', '1'] unit=u.service pid=7"),
        (syslog.LOG_WARNING, "odd reason='two words'"),
        (syslog.LOG_ERR, "bad text=''"),
    ]


def test_a_traceback_is_folded_into_the_line(handle: Handle) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("t").exception("handler crashed")
    ((level, text),) = handle.lines
    assert level == syslog.LOG_ERR and text.startswith("handler crashed | ")
    assert "\n" not in text and "RuntimeError: boom" in text


def test_level_threshold_drops_lower_events(handle: Handle) -> None:
    brokerlog.set_level("warning")
    structlog.get_logger("t").info("quiet")
    structlog.get_logger("t").warning("loud")
    assert [t for _, t in handle.lines] == ["loud"]


def test_unknown_level_is_a_value_error(handle: Handle) -> None:
    with pytest.raises(ValueError):
        brokerlog.set_level("chatty")
