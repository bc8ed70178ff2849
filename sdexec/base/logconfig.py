"""structlog set-up for the server: key=value events, JSON when not on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Configure structlog once for the process.

    ``json`` defaults to "stderr is not a terminal": machines read the JSON,
    people get colour.
    """
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    try:
        threshold = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=True))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
