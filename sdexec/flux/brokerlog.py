"""structlog events to the broker's log, where ``flux dmesg`` shows them.

A module's stderr is the broker's, which nobody reads in a running instance;
operators read ``flux dmesg``.  So the server's events (exec, started,
finished, kill, refusals, lifecycle) go to ``flux_log`` at the matching
syslog level, rendered as ``event key=value ...`` (the broker adds the time,
the module name and the rank: ``sdexec.info[3]: exec argv=[...]``).
Tracebacks are folded into the line.
"""

from __future__ import annotations

import syslog
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from sdexec.base.logconfig import LEVELS

#: structlog method name -> syslog priority.
PRIORITY = {
    "debug": syslog.LOG_DEBUG,
    "info": syslog.LOG_INFO,
    "msg": syslog.LOG_INFO,
    "warning": syslog.LOG_WARNING,
    "warn": syslog.LOG_WARNING,
    "error": syslog.LOG_ERR,
    "exception": syslog.LOG_ERR,
    "critical": syslog.LOG_CRIT,
    "fatal": syslog.LOG_CRIT,
}

Emit = Callable[[int, str], None]


class BrokerLogger:
    """A structlog logger whose every method writes one broker log line."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit

    def __getattr__(self, name: str) -> Callable[[str], None]:
        level = PRIORITY.get(name, syslog.LOG_INFO)

        def write(message: str) -> None:
            self._emit(level, message)

        return write


def _value(value: Any) -> str:
    if isinstance(value, str) and value and " " not in value and "=" not in value:
        return value
    return repr(value)


def _render(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    text = str(event.pop("event", ""))
    exc = event.pop("exception", None)
    fields = " ".join(f"{key}={_value(value)}" for key, value in event.items())
    line = f"{text} {fields}" if fields else text
    if exc:
        line += " | " + " | ".join(str(exc).strip().splitlines())
    return line


_emit: Emit | None = None


def configure(handle: Any, level: str = "info") -> None:
    """Send structlog's events to ``handle.log(priority, text)`` from now on."""
    global _emit
    _emit = handle.log
    set_level(level)


def set_level(level: str) -> None:
    """Drop events below ``level`` (debug, info, warning, error, critical)."""
    try:
        threshold = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log-level={level}: expected one of {', '.join(LEVELS)}") from None
    emit = _emit
    assert emit is not None, "configure() first"
    structlog.configure(
        processors=[structlog.processors.format_exc_info, _render],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_args: BrokerLogger(emit),
        cache_logger_on_first_use=False,
    )
