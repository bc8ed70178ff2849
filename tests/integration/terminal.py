"""A real terminal for tests: Debian's tmux on a private socket, driven by send-keys.

Each :class:`Tmux` is one tmux server of its own (``-S`` socket in the test's
directory), so tests never meet a user's tmux or each other's.  A pane runs a
plain ``sh`` with the test's environment; tests type into it with
:meth:`Tmux.type` / :meth:`Tmux.keys` and read the screen with
:meth:`Tmux.screen` (``capture-pane``).  :meth:`Tmux.wait_for` polls the
screen until a condition holds: a deadline that fails the test, never an
assertion about how long something took.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TMUX = "tmux"


class Tmux:
    def __init__(self, socket: Path, env: dict[str, str], cols: int = 100, rows: int = 30) -> None:
        self.socket = socket
        self.env = env
        self._run("new-session", "-d", "-s", "t", "-x", str(cols), "-y", str(rows), "sh")
        self.pane = "t:0.0"
        self._run("set-option", "-g", "status", "off")
        self.type("PS1='$ '; clear")
        self.wait_for(lambda s: s.strip() == "$")

    def _run(self, *args: str) -> str:
        r = subprocess.run(
            [TMUX, "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
        )
        assert r.returncode == 0, f"tmux {args[0]}: {r.stderr}"
        return r.stdout

    def type(self, line: str) -> None:
        """Type ``line`` and Enter."""
        self._run("send-keys", "-t", self.pane, "-l", line)
        self._run("send-keys", "-t", self.pane, "Enter")

    def keys(self, *keys: str) -> None:
        """tmux key names: ``C-c``, ``C-z``, ``Escape``, ``q``, ..."""
        self._run("send-keys", "-t", self.pane, *keys)

    def screen(self) -> str:
        return self._run("capture-pane", "-p", "-t", self.pane)

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen().splitlines()]

    def wait_for(self, cond: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if cond(text):
                return text
            assert time.monotonic() < deadline, f"screen never matched:\n{text}"
            time.sleep(0.05)

    def wait_text(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first match of regex ``pattern`` once it is on the screen."""
        text = self.wait_for(lambda s: re.search(pattern, s) is not None, timeout)
        m = re.search(pattern, text)
        assert m is not None
        return m

    def clear(self) -> None:
        """Wait for the local prompt, then clear the screen and its history."""
        self.type("clear")
        self.wait_for(lambda s: s.strip() == "$")
        self._run("clear-history", "-t", self.pane)

    def split(self) -> None:
        """Split the window side by side; the test keeps the left pane."""
        self._run("split-window", "-h", "-d", "-t", self.pane, "sh")

    def resize_pane(self, cols: int) -> None:
        self._run("resize-pane", "-t", self.pane, "-x", str(cols))

    def pane_size(self) -> tuple[int, int]:
        out = self._run("display-message", "-p", "-t", self.pane, "#{pane_width} #{pane_height}")
        cols, rows = out.split()
        return int(cols), int(rows)

    def tty_size(self) -> tuple[int, int]:
        """The window size the kernel has for the pane's terminal (tmux sets it a bit later)."""
        path = self._run("display-message", "-p", "-t", self.pane, "#{pane_tty}").strip()
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
        try:
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
        finally:
            os.close(fd)
        return cols, rows

    def resized(self, cols: int) -> tuple[int, int]:
        """resize-pane to ``cols`` columns; the new size, once the terminal has it."""
        self.resize_pane(cols)
        size = self.pane_size()
        deadline = time.monotonic() + 30
        while self.tty_size() != size:
            assert time.monotonic() < deadline, "the pane's terminal never got its new size"
            time.sleep(0.05)
        return size

    def pane_pid(self) -> int:
        return int(self._run("display-message", "-p", "-t", self.pane, "#{pane_pid}"))

    def kill(self) -> None:
        subprocess.run(
            [TMUX, "-S", str(self.socket), "kill-server"], capture_output=True, env=self.env
        )


@contextlib.contextmanager
def tmux(d: Path, env: dict[str, str], cols: int = 100, rows: int = 30) -> Iterator[Tmux]:
    t = Tmux(d / f"tmux-{time.monotonic_ns()}", env, cols, rows)
    try:
        yield t
    finally:
        t.kill()
