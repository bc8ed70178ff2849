"""Log lines a flood cannot multiply: one per interval and key, with a count.

A server refusing ten thousand connections a second must say so, but not ten
thousand times a second: :class:`LogLimiter` lets the first event of a key
through, then one per ``interval`` seconds, each telling how many were held
back since the last one.  Sans-IO: the clock is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

#: Keys remembered at most (a flood of distinct keys must not grow it).
MAX_KEYS = 1024


class LogLimiter:
    """Whether to log an event now, and how many were held back before it."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def allow(self, key: Hashable = None) -> int | None:
        """None: hold this one back; else log it, with this many held back since."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if last is None and len(self._last) >= MAX_KEYS:
            self._expire(now)
            if len(self._last) >= MAX_KEYS:  # a flood of distinct keys: at most this many lines
                self._last.clear()
                self._held.clear()
        self._last[key] = now
        return self._held.pop(key, 0)

    def _expire(self, now: float) -> None:
        for key, last in list(self._last.items()):
            if now - last >= self.interval:
                del self._last[key]
                self._held.pop(key, None)
