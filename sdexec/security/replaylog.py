"""The replay cache on disk: an accepted signature stays refused across restarts.

Theory of operation
-------------------
:class:`~sdexec.security.replay.ReplayCache` remembers, in memory, every
signature accepted within its time-to-live.  A server restarted within that
time would forget them, and a captured signed request would run again.  So
each accepted signature's replay key and signing time are appended, one
line each (``HEXKEY ISSUED``), with one ``write`` to a file kept open in
the state directory (``replay.log``, mode 0600), before the request is
dispatched.  A restarted server reads the file back: entries whose TTL (the
server's current ``--sign-ttl``) has run out are dropped, the rest go into
the cache, and the file is rewritten with them atomically.  A torn last
line (a server killed in the middle of an append) is skipped.  The file is
rewritten again whenever it has grown well past the live entries.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sdexec.security.replay import ReplayCache

#: Rewrite when the file has this many lines more than twice the live entries.
_SLACK = 4096


class ReplayLog:
    """Appends accepted signatures; loads them back into a cache at start."""

    def __init__(self, path: Path, ttl: float) -> None:
        self.path = path
        self.ttl = ttl
        self._fd = -1
        self._lines = 0
        self._issued: dict[bytes, float] = {}

    def load(self, cache: ReplayCache, now: float) -> int:
        """Fill ``cache`` with the entries still live; returns how many."""
        live: dict[bytes, float] = {}
        with contextlib.suppress(FileNotFoundError):
            for raw in self.path.read_bytes().splitlines():
                try:
                    hexkey, issued_text = raw.split()
                    key, issued = bytes.fromhex(hexkey.decode()), float(issued_text)
                except ValueError:
                    continue  # torn or foreign
                if issued + self.ttl + 1 >= now:
                    live[key] = issued
        for key, issued in live.items():
            with contextlib.suppress(OSError):  # full: the oldest stay out
                cache.accept(key, issued + self.ttl + 1, now)
        self._issued = live
        self._rewrite(now)
        return len(live)

    def append(self, key: bytes, issued: float, now: float) -> None:
        """Record one accepted signature (before its request is dispatched)."""
        self._issued[key] = issued
        if self._lines > 2 * len(self._issued) + _SLACK:
            self._rewrite(now)
        if self._fd < 0:
            self._open()
        os.write(self._fd, f"{key.hex()} {issued:.6f}\n".encode())
        self._lines += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o600)

    def _rewrite(self, now: float) -> None:
        self.close()
        self._issued = {k: t for k, t in self._issued.items() if t + self.ttl + 1 >= now}
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as f:
            f.write(b"".join(f"{k.hex()} {t:.6f}\n".encode() for k, t in self._issued.items()))
        os.replace(tmp, self.path)
        self._lines = len(self._issued)
