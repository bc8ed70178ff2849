"""LogLimiter: one line per interval and key, with the count of those held back."""

from __future__ import annotations

from sdexec.base.ratelimit import MAX_KEYS, LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_event_passes_and_the_next_ones_are_counted() -> None:
    clock = Clock()
    lim = LogLimiter(10.0, clock)
    assert lim.allow("k") == 0
    assert [lim.allow("k") for _ in range(5)] == [None] * 5
    clock.now += 10.0
    assert lim.allow("k") == 5
    assert lim.allow("k") is None


def test_keys_are_limited_apart() -> None:
    lim = LogLimiter(10.0, Clock())
    assert lim.allow("a") == 0
    assert lim.allow("b") == 0
    assert lim.allow("a") is None


def test_a_flood_of_distinct_keys_stays_bounded() -> None:
    clock = Clock()
    lim = LogLimiter(10.0, clock)
    passed = sum(lim.allow(i) is not None for i in range(100 * MAX_KEYS))
    assert passed == 100 * MAX_KEYS  # each key is new: logged, but memory is bounded
    assert len(lim._last) <= MAX_KEYS
