"""Supervision of the systemd manager the server runs its units under.

Theory of operation
-------------------
Two things can go: the **manager** (killed, crashed, or only re-executing)
and the **bus** to it (its dbus-daemon died).  Both are noticed at once,
without polling: the bus connection closing, the bus daemon's
``NameOwnerChanged`` for ``org.freedesktop.systemd1``
(:meth:`~sdexec.systemd.bus.SystemdBus.wait_lost`) and, for the embedded
manager, a pidfd on the manager's pid that becomes readable when it exits.

Then, in order:

1. Tell the manager's death from a lost bus: the manager's pid (the private
   manager's pid file, or what the bus daemon said at connect time) is
   still alive, or not.  A manager that re-executes keeps its pid, and
   systemd keeps its units across a re-execution: nothing is lost then.
2. :meth:`~sdexec.server.service.Service.manager_lost`: the bus is closed,
   so that every call in flight fails at once, and every request that needs
   the manager is answered with the reason (EHOSTDOWN "the systemd manager
   (pid N) died; restarting it", or ECONNRESET for a lost bus) until it is
   back.  When the manager died, every process that had not finished is
   *lost*: its client and waiter get that as its outcome, and a waitable
   one keeps it, in its record too, so a later ``wait`` says the manager
   died (never "not found").
3. Recover.  The embedded manager is started again
   (:meth:`~sdexec.systemd.private.PrivateManager.restart`): what still ran
   in the dead manager's cgroup is killed (the lost outcome already said
   so), its journald and dbus-daemon went with it (parent-death signal), and
   no cgroup is left.  Then the bus is connected again, retried for up to
   ``--manager-timeout`` seconds (a socket-activated dbus-daemon is started
   again by the manager on the first connection), and, when only the bus
   was lost, every unit's state is read again
   (:meth:`~sdexec.server.service.Service.resync`).
4. If the manager cannot be reached again, the server logs it once and
   shuts down cleanly (:attr:`Supervisor.gave_up`), removing its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from typing import TYPE_CHECKING, Protocol

import structlog

from sdexec.base.errors import SdexecError, errnum_of, message_of

if TYPE_CHECKING:
    from sdexec.systemd.bus import SystemdBus
    from sdexec.systemd.private import PrivateManager

log = structlog.get_logger("sdexec.supervisor")

#: How long to keep trying to reach the manager again before giving up.
RECOVER_FOR = 30.0  # sdexec serve --manager-timeout
#: How long a manager that left the bus may take to exit, to count as dead.
EXIT_GRACE = 0.5
_RETRY_FIRST = 0.02
_RETRY_MAX = 0.5


class Supervised(Protocol):
    """What the supervisor needs of the service (:class:`~sdexec.server.service.Service`)."""

    def manager_lost(self, why: SdexecError, lost: str | None) -> None: ...
    def manager_back(self) -> None: ...
    async def resync(self, why: str) -> None: ...


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X", b"")


class Supervisor:
    """Watches the manager and its bus; owned by the daemon's TaskGroup."""

    def __init__(
        self,
        bus: SystemdBus,
        service: Supervised,
        manager: PrivateManager | None,
        stop: asyncio.Event,
        *,
        recover_for: float = RECOVER_FOR,
    ) -> None:
        self.bus = bus
        self.recover_for = recover_for
        self.service = service
        self.manager = manager
        self.stop = stop
        #: Why the server had to stop (the manager could not be reached again).
        self.gave_up: SdexecError | None = None
        self.recoveries = 0

    def manager_pid(self) -> int:
        if self.manager is not None:
            return self.manager.pid() or 0
        return self.bus.manager_pid

    async def run(self) -> None:
        while not self.stop.is_set():
            pid = self.manager_pid()
            why = await self._wait_lost(pid)
            if self.stop.is_set():
                return
            try:
                await self._recover(why, pid)
            except OSError as exc:
                self.gave_up = SdexecError(errnum_of(exc), message_of(exc))
                log.error(
                    "cannot reach the systemd manager again; shutting down",
                    error=self.gave_up.message,
                )
                self.stop.set()
                return

    async def _wait_lost(self, pid: int) -> SdexecError:
        """The reason, once the bus says the manager or the connection is gone
        (or the embedded manager's pidfd says it exited)."""
        loop = asyncio.get_running_loop()
        pidfd = -1
        if self.manager is not None and pid:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)
        if pidfd >= 0:
            loop.add_reader(
                pidfd,
                self.bus.lose,
                SdexecError(errno.EHOSTDOWN, f"the systemd manager (pid {pid}) died"),
            )
        try:
            return await self.bus.wait_lost()
        finally:
            if pidfd >= 0:
                loop.remove_reader(pidfd)
                os.close(pidfd)

    async def _recover(self, why: SdexecError, pid: int) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        dead = await self._died(pid) if pid else self.manager is not None
        if not dead:
            log.error("systemd bus lost", manager_pid=pid, reason=why.message)
            self.service.manager_lost(
                SdexecError(
                    errno.ECONNRESET, "lost the connection to the systemd bus; reconnecting"
                ),
                None,
            )
            if await self._reconnect(began, pid):
                self.service.manager_back()
                await self.service.resync("the systemd bus was down")
                self._back(began)
                return
            why = SdexecError(errno.EHOSTDOWN, "the systemd manager died while its bus was down")
        who = f"the systemd manager (pid {pid})" if pid else "the systemd manager"
        log.error("systemd manager died", pid=pid, reason=why.message)
        if self.manager is not None:
            request_error = SdexecError(errno.EHOSTDOWN, f"{who} died; restarting it")
            lost = f"{who} died while the process ran; the process was killed with it"
        else:
            request_error = SdexecError(errno.EHOSTDOWN, f"{who} died; waiting for it")
            lost = f"{who} died while the process ran; its outcome is unknown"
        self.service.manager_lost(request_error, lost)
        if self.manager is not None:
            killed = await asyncio.to_thread(self.manager.restart)
            log.info(
                "private systemd restarted",
                pid=self.manager.pid(),
                killed=sorted(killed),
                after=round(loop.time() - began, 3),
            )
        await self._reconnect(began)
        self.service.manager_back()
        self._back(began)

    def _back(self, began: float) -> None:
        self.recoveries += 1
        after = asyncio.get_running_loop().time() - began
        log.info("systemd manager reachable again", after=round(after, 3))

    async def _died(self, pid: int) -> bool:
        """Whether the manager's pid has exited, or does within :data:`EXIT_GRACE`.

        The bus sees the manager's socket close while the process is still
        on its way out, a moment before it is a zombie; a manager that only
        re-executes (or lost its bus) stays.
        """
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        except OSError:
            return not pid_alive(pid)
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await asyncio.wait_for(exited, EXIT_GRACE)
            return True
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)

    async def _reconnect(self, began: float, pid: int = 0) -> bool:
        """Connect again (True); False if the manager ``pid`` died meanwhile."""
        loop = asyncio.get_running_loop()
        delay = _RETRY_FIRST
        while True:
            try:
                await self.bus.reconnect()
                return True
            except SdexecError as exc:
                if pid and not pid_alive(pid):
                    return False
                if loop.time() - began > self.recover_for:
                    raise SdexecError(
                        errno.EHOSTDOWN,
                        f"the systemd manager is still unreachable after {self.recover_for:g} s: "
                        f"{exc.message}",
                    ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
