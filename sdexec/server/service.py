"""The RFC 42 service: exec, attach, logs, write, kill, wait, list, disconnect.

Theory of operation
-------------------
The service owns the process table.  Processes belong to the service, not to
the connection that asked for them: a connection only holds a *stream* on a
process, and losing it kills a foreground process (RFC 42 "exec") and leaves
a background one alone.

:class:`Service` is its parts together, each a module of its own over the
table (:mod:`sdexec.server.table`: the indexes and how a process leaves
them): ``exec`` (:mod:`sdexec.server.execution`), ``attach`` and ``logs``
(:mod:`sdexec.server.attaching`), ``write``, ``kill`` and ``wait``
(:mod:`sdexec.server.control`), ``list`` and ``stats-get``
(:mod:`sdexec.server.listing`), a client going away
(:mod:`sdexec.server.connections`), units found again after a restart or a
lost manager (:mod:`sdexec.server.adoption`).  This module registers the
handlers and shuts the service down.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Coroutine
from typing import Any

import structlog

from sdexec.server.adoption import Adoption
from sdexec.server.attaching import Attaching
from sdexec.server.channels import shutdown_aux
from sdexec.server.connections import Connections
from sdexec.server.control import Control
from sdexec.server.execution import Execution
from sdexec.server.listing import Listing
from sdexec.server.process import Process, ProcState

log = structlog.get_logger("sdexec.service")


class Service(Execution, Attaching, Control, Listing, Connections, Adoption):
    """RFC 42 handlers registered under ``<name>.<method>``."""

    def register_methods(self) -> None:
        """Serve every RFC 42 method (and sdexec's) under ``<name>.<method>``."""
        for method, handler, streaming_only in (
            ("exec", self.exec, False),
            ("attach", self.attach, True),
            ("logs", self.logs, True),
            ("write", self.write, False),
            ("kill", self.kill, False),
            ("wait", self.wait, False),
            ("list", self.list, False),
            ("stats-get", self.stats_get, False),
            ("disconnect", self.disconnect, False),
        ):
            self.router.register(f"{self.name}.{method}", handler, streaming_only=streaming_only)
        self.router.disconnect_hooks.append(self.connection_closed)

    # --- shutdown ---------------------------------------------------------------------------

    async def shutdown(self, stop_background: bool = False, reason: str | None = None) -> None:
        """Fail streams and waits, stop foreground units (and background ones if asked).

        Open requests get ENOSYS with ``reason`` (default: the server is
        shutting down); the units are stopped all at once.
        """
        self.shutting_down = True
        if reason is not None:
            self.shutdown_reason = reason
        stopping: list[Coroutine[Any, Any, None]] = []
        holders: list[str] = []  # background terminals' holders, stopped after their commands
        for proc in self.processes():
            if proc.waiter is not None:
                proc.waiter.error(errno.ENOSYS, self.shutdown_reason)
                proc.waiter = None
            foreground = not proc.background
            for att in list(proc.attachers):
                att.req.error(errno.ENOSYS, "server is shutting down")
                proc.detach(att.req)
            if proc.client is not None:
                proc.client.error(errno.ENOSYS, self.shutdown_reason)
                proc.detach_client()
            if stop_background and proc.background:
                self.state.remove(proc.unit)
            proc.cancel_stop_timer()
            if (foreground or stop_background) and proc.state is not ProcState.EXITED:
                stopping.append(self._stop_quietly(proc))
            elif stop_background and proc.background and proc.waitable:
                # Finished, its unit kept for a wait that can no longer come.
                stopping.append(self._release_unit(proc.unit))
            if stop_background and proc.holder is not None:
                holders.append(proc.holder.unit)
        await asyncio.gather(*stopping)
        await asyncio.gather(*(self._release_unit(unit) for unit in holders))
        # Channels, msgchans (sdexec.server.channels).
        shutdown_aux(proc.aux for proc in self.processes())

    async def _stop_quietly(self, proc: Process) -> None:
        try:
            await self.bus.stop(proc.unit)
        except OSError as exc:
            log.debug("stop at shutdown failed", error=str(exc), **proc.log_fields())

    def close(self) -> None:
        """Release what the service keeps open (its state log); after shutdown."""
        self.state.close()

    def background_kept(self) -> int:
        """Background processes whose unit or status must outlive this server.

        A finished waitable process counts: its status is still owed to a
        ``wait``, and its unit (kept by RemainAfterExit) holds it.  One that
        :meth:`shutdown` stopped does not: its record is gone with it.
        """
        return sum(
            1 for p in self.processes() if p.background and self.state.get(p.unit) is not None
        )
