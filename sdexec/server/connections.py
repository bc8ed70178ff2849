"""A client going away: RFC 6 ``disconnect``, or its connection closing.

Its streams end: a foreground process whose client is gone is killed (as
RFC 42 asks), a background one is left alone; its waits and attaches are
dropped, a process waitable only while the connection lasted
(``SDEXEC_WAITABLE_WHILE_CONNECTED``) is owed to nobody, and its followers
stop.
"""

from __future__ import annotations

from typing import Any

import structlog

from sdexec.broker.request import Request
from sdexec.server.process import Process, ProcState
from sdexec.server.table import ProcessTable

log = structlog.get_logger("sdexec.service")


class Connections(ProcessTable):
    """The ``disconnect`` handler and the router's connection-closed hook."""

    def disconnect(self, req: Request) -> None:
        self._drop_sender(lambda s: s == req.sender)

    def connection_closed(self, conn_id: str) -> None:
        self._drop_sender(lambda s: s[0] == conn_id)
        for proc in self._wait_scoped.pop(conn_id, ()):
            if self.by_unit.get(proc.unit) is not proc:
                continue  # reaped already, or it never started
            proc.reap_when_done = True
            if proc.state is ProcState.EXITED and proc.waiter is None:
                log.info("status owed to nobody: its connection is gone", **proc.log_fields())
                self.reap(proc)
        self.followers.stop(conn_id)  # now, not when their processes end

    def _drop_sender(self, match: Any) -> None:
        for proc in self.processes():
            if proc.waiter is not None and match(proc.waiter.sender):
                proc.waiter = None
            for att in [a for a in proc.attachers if match(a.req.sender)]:
                proc.detach(att.req)
            client = proc.client
            if client is None or not match(client.sender):
                continue
            proc.detach_client()
            if not proc.background:
                log.info("client gone, killing foreground process", **proc.log_fields())
                self.router.spawn(self._kill_quietly(proc))

    async def _kill_quietly(self, proc: Process) -> None:
        try:
            await self.bus.kill(proc.unit, 9, "all")
        except OSError as exc:
            log.debug("kill after disconnect failed", error=str(exc), **proc.log_fields())
