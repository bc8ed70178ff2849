"""Whose job a unit runs: a guest sees the shells of its own Flux jobs.

Theory of operation
-------------------
In a Flux system instance every unit is started by the instance owner
(``flux``): job-exec runs a guest's job shell as ``IMP exec SHELL JOBID``,
and the setuid IMP switches to the guest.  Flux's C module serves its owner
only; this module also lets a guest reach it for the methods that only look
and signal (:data:`GUEST_METHODS`), and the server's guest rules
(:mod:`sdexec.security.guest`) then show it the processes that *work for it*:
those whose :attr:`~sdexec.server.process.Process.tenant_uid` is its uid.
Waiting for such a process, or writing to it, stays the owner's: job-exec
waits for its shells.

A process's tenant is the owner of the job whose id is the last word of an
``IMP exec SHELL JOBID`` command line, as ``job-list`` on rank 0 reports it
(the job's signed owner, not anything in the request).  It is looked up
only when a guest asks, so a job's start pays nothing: :class:`TenantGate`
sits between the router and the service, passes the owner's requests
straight on, and holds each guest request until the tenants of the shells
not yet known are looked up.  Guests' requests are served in the order they
came, by one task the server's TaskGroup owns.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import structlog

from sdexec.security.guest import is_guest

if TYPE_CHECKING:
    from sdexec.broker.request import Request
    from sdexec.broker.router import Router
    from sdexec.server.process import Process

log = structlog.get_logger("sdexec.flux")

#: Methods a guest may call: those that look at processes and signal them.
GUEST_METHODS = ("list", "kill", "attach", "logs", "disconnect")
#: How long one job-list lookup may take before the guest is answered without it.
LOOKUP_TIMEOUT = 5.0

Rpc = Callable[[str, dict[str, Any]], Awaitable[Any]]


def job_of(cmdline: list[str]) -> int | None:
    """The job id of a job shell started through the IMP (``IMP exec SHELL JOBID``)."""
    if len(cmdline) != 4 or cmdline[1] != "exec" or not cmdline[3].isdigit():
        return None
    if not os.path.isabs(cmdline[0]):
        return None
    return int(cmdline[3])


class JobOwners:
    """The owners of jobs, from ``job-list``."""

    def __init__(self, rpc: Rpc) -> None:
        self._rpc = rpc

    async def resolve(self, procs: Iterable[Process]) -> None:
        """Set the tenant of every job shell among ``procs`` that has none yet.

        A lookup that fails leaves the tenant unknown (the guest does not
        see that shell), and it is tried again at the guest's next request.
        """
        shells: dict[int, list[Process]] = {}
        for proc in procs:
            if proc.tenant_uid is None and (jobid := job_of(proc.cmd.cmdline)) is not None:
                shells.setdefault(jobid, []).append(proc)
        if not shells:
            return
        owners = await asyncio.gather(*(self._lookup(jobid) for jobid in shells))
        for owned, owner in zip(shells.values(), owners, strict=True):
            for proc in owned:
                proc.tenant_uid = owner

    async def _lookup(self, jobid: int) -> int | None:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                reply = await self._rpc("job-list.list-id", {"id": jobid, "attrs": ["userid"]})
        except (OSError, TimeoutError) as exc:
            log.warning("cannot look up a job's owner", jobid=jobid, error=str(exc) or "timeout")
            return None
        job = reply.get("job") if isinstance(reply, dict) else None
        userid = job.get("userid") if isinstance(job, dict) else None
        return userid if isinstance(userid, int) else None


class TenantGate:
    """The router's gate: guests' requests wait for their processes' tenants."""

    def __init__(
        self, router: Router, owners: JobOwners, processes: Callable[[], Iterable[Process]]
    ) -> None:
        self.router = router
        self.owners = owners
        self.processes = processes
        self._queue: asyncio.Queue[Request] = asyncio.Queue()

    def install(self) -> None:
        self.router.gate = self.submit

    def submit(self, req: Request) -> None:
        if is_guest(req):
            self._queue.put_nowait(req)
        else:
            self.router.dispatch(req)

    async def run(self) -> None:
        """Serve guests' requests in order, each once the tenants are known."""
        while True:
            req = await self._queue.get()
            if req.topic.rsplit(".", 1)[-1] != "disconnect":
                await self.owners.resolve(list(self.processes()))
            self.router.dispatch(req)
