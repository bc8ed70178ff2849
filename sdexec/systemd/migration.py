"""Keep the kernel's cgroup migration lock warm while units are about to start.

Theory of operation
-------------------
systemd 252 forks a unit's process and then writes its pid into the unit's
``cgroup.procs``.  That write takes the kernel's ``cgroup_threadgroup_rwsem``
for writing, and a writer that finds the lock idle first waits for a full RCU
grace period (``rcu_sync_enter``): 8-20 ms on the project's machines, during
which the manager does nothing else.  A writer that comes within about one
grace period of the previous one finds the lock still "recently used" and
passes at once (0.02 ms).  Measured with ``perf trace`` on the manager: every
``systemd-run --wait`` and every sdexec exec started after a pause of 30 ms
or more paid it, in the manager's ``write(cgroup.procs)``; a launch right
after another one did not.  (The ``favordynmods`` mount option of cgroup2
removes the wait, but it is the host's to set.)

So the server pays that grace period itself, ahead of time and off the
manager's path: :meth:`MigrationWarmer.kick` (called when an exec request
arrives, and when a client connects that announces an exec: the ``sdexec
exec`` command binds its socket to a name starting with
:data:`sdexec.transport.link.EXEC_ANNOUNCE` and connects before it imports
its client) wakes a thread that writes ``0`` ("this process") to the
server's own ``cgroup.procs`` every few milliseconds until ``hold`` seconds
after the last kick.  Each write migrates the server into
the cgroup it is already in: nothing changes but the lock's state.  The first
write waits for the grace period while the client is still sending its
request and the manager is still creating the unit; the ones after it keep
the lock warm, so the manager's own migration of the new process passes at
once.

The kernel holds ``cgroup_mutex`` while a cold write waits for its grace
period, and the manager needs that mutex to create and remove unit cgroups:
for one grace period after a cold kick, a unit that ends waits to be
cleaned up (``finished`` comes that much later; a kill measured 12-15 ms to
``finished`` instead of 3 when every connection kicked).  That is why only
an exec, or a client that announces one, kicks: the manager would have
waited that grace period for the exec's own migration anyway.

Only a process whose threads all share one cgroup may write its pid to
``cgroup.procs`` without moving threads: the warmer runs only in a "domain"
cgroup (or the root).  Any error on a write (no cgroup2, a read-only
``/sys/fs/cgroup``, no permission) disables it for good; the reason is
:attr:`MigrationWarmer.disabled`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

#: Seconds the lock is kept warm after the last kick: a client's request and
#: the manager's fork come well within this of the connection and the exec.
HOLD = 0.05
#: Seconds between writes: well under the shortest grace period measured here.
INTERVAL = 0.003


def own_cgroup_procs(root: Path, proc_cgroup: str = "/proc/self/cgroup") -> tuple[Path | None, str]:
    """This process's ``cgroup.procs`` on the cgroup-v2 hierarchy at ``root``,
    or None with the reason it cannot be used."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError as exc:
        return None, f"cannot read {proc_cgroup}: {exc.strerror}"
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return None, "no cgroup-v2 membership"
    directory = root / path.lstrip("/") if path != "/" else root
    try:
        kind = (directory / "cgroup.type").read_text().strip()
    except FileNotFoundError:
        kind = "domain"  # the root cgroup has no cgroup.type
    except OSError as exc:
        return None, f"cannot read {directory}/cgroup.type: {exc.strerror}"
    if kind != "domain":
        return None, f"the server's cgroup is {kind}, not a domain"
    return directory / "cgroup.procs", ""


class MigrationWarmer:
    """A thread that keeps the cgroup migration lock warm after each :meth:`kick`."""

    def __init__(
        self, procs: Path | None, *, hold: float = HOLD, interval: float = INTERVAL
    ) -> None:
        self.procs = procs
        self.hold = hold
        self.interval = interval
        #: Why the warmer does nothing ("" while it works).
        self.disabled = "" if procs is not None else "no cgroup.procs"
        #: Writes done so far (for tests and the benchmark).
        self.writes = 0
        self._until = 0.0
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._fd = -1

    def start(self) -> None:
        """Open the cgroup's ``cgroup.procs`` and start the thread (no-op when disabled)."""
        if self.disabled or self._thread is not None:
            return
        assert self.procs is not None
        try:
            self._fd = os.open(self.procs, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.disabled = f"cannot open {self.procs}: {exc.strerror}"
            return
        self._thread = threading.Thread(target=self._run, name="cgroup-warmer", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Keep the lock warm from now until ``hold`` seconds from now."""
        if self._thread is None:
            return
        until = time.monotonic() + self.hold
        with self._cond:
            if until > self._until:
                idle = self._until <= 0.0 or time.monotonic() >= self._until
                self._until = until
                if idle:
                    self._cond.notify()

    def close(self) -> None:
        """Stop the thread and close the file."""
        thread, self._thread = self._thread, None
        if thread is not None:
            with self._cond:
                self._closed = True
                self._cond.notify()
            thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and time.monotonic() >= self._until:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                os.write(self._fd, b"0")
            except OSError as exc:
                self.disabled = f"cannot write {self.procs}: {exc.strerror}"
                return
            self.writes += 1
            time.sleep(self.interval)
