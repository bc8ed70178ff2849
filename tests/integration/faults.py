"""Helpers for the fault suite (tests/integration/test_faults_*.py).

Every fault test also checks the server's log: a fault must end in an errno
and a clear message, never in a traceback.  :func:`log_mark` and
:func:`assert_no_traceback` look only at what a server wrote since the mark,
so a test on the session's shared server judges its own part of the log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from conftest import Server


def log_mark(srv: Server) -> int:
    """Where the server's log ends now."""
    try:
        return srv.log_path.stat().st_size
    except FileNotFoundError:
        return 0


def log_since(srv: Server, mark: int) -> str:
    with open(srv.log_path, "rb") as f:
        f.seek(mark)
        return f.read().decode(errors="replace")


def assert_no_traceback(srv: Server, mark: int = 0) -> None:
    text = log_since(srv, mark)
    assert "Traceback" not in text, text[text.index("Traceback") - 2000 :][:6000]


@contextlib.contextmanager
def no_traceback(srv: Server) -> Iterator[None]:
    """Fail if the server logs a traceback while the block runs."""
    mark = log_mark(srv)
    yield
    assert_no_traceback(srv, mark)


def eventually(check: Callable[[], bool], timeout: float = 30.0, step: float = 0.05) -> bool:
    """Poll ``check`` until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
