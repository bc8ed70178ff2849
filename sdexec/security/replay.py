"""Replay detection: a signature is accepted once within its time-to-live.

Theory of operation
-------------------
The server remembers the replay key (:attr:`sdexec.security.sign.Unwrapped.replay_key`,
a SHA-256 of the signature string) of every signature it has *accepted*,
until that signature's TTL has run out; after that the TTL check refuses it
anyway, so it can be forgotten.  Expired entries are dropped from a heap,
oldest expiry first, on every insertion.

Memory is bounded: :attr:`ReplayCache.capacity` entries (about 150 bytes
each).  When the cache is full of live entries, a new signature is refused
with EAGAIN rather than accepted unrecorded; only the server's own uid can
make signatures that get this far, so this is not a lever for a guest.

Check-and-record is one call (:meth:`ReplayCache.accept`), made on the event
loop after verification, so two copies of one signature verified at the same
time cannot both pass.  Sans-IO: the clock is passed in.
"""

from __future__ import annotations

import errno
import heapq

from sdexec.base.errors import SdexecError

DEFAULT_CAPACITY = 1_000_000


class ReplayCache:
    """Keys of accepted signatures, each kept until its expiry time."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: bytes) -> bool:
        return key in self._expiry

    def purge(self, now: float) -> None:
        """Forget every entry whose expiry is before ``now``."""
        heap = self._heap
        while heap and heap[0][0] < now:
            expiry, key = heapq.heappop(heap)
            if self._expiry.get(key) == expiry:
                del self._expiry[key]

    def accept(self, key: bytes, expiry: float, now: float) -> None:
        """Record ``key`` until ``expiry``; EPERM if already seen, EAGAIN if full."""
        self.purge(now)
        if key in self._expiry:
            raise SdexecError(errno.EPERM, "signature verification failed: replayed signature")
        if len(self._expiry) >= self.capacity:
            raise SdexecError(errno.EAGAIN, "replay cache is full; try again later")
        self._expiry[key] = expiry
        heapq.heappush(self._heap, (expiry, key))
