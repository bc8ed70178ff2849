"""``write``, ``kill`` and ``wait``: what a client does to a process it names.

``write`` feeds a streaming exec's stdin (or an attach stream's), and has no
response; ``kill`` signals the unit's processes through systemd; ``wait``
takes the status of a waitable background process, once (its delivery reaps
it, :meth:`~sdexec.server.table.ProcessTable.reap`).
"""

from __future__ import annotations

import errno

import structlog

from sdexec.base.errors import SdexecError
from sdexec.broker.request import Request
from sdexec.proto import rfc42
from sdexec.proto.rfc42 import LocalFlag
from sdexec.server.process import ProcState
from sdexec.server.table import ProcessTable

log = structlog.get_logger("sdexec.service")


class Control(ProcessTable):
    """The ``write``, ``kill`` and ``wait`` handlers."""

    # --- write ------------------------------------------------------------------------------

    def write(self, req: Request) -> None:
        # stdin's hot path; None: another layout, or a signed request (its signed payload counts)
        fast = req.fast_write() if req.signed is None else None
        if fast is not None:
            wr = rfc42.WriteRequest(*fast)
        else:
            try:
                wr = rfc42.parse_write(req.payload())
            except OSError as exc:
                log.info("write dropped", uid=req.userid, reason=str(exc))
                return  # write has no response (NORESPONSE); drop what cannot be parsed
        proc = self.by_stream.get((req.sender, wr.matchtag))
        if proc is None:
            return
        proc.write(wr.stream, wr.data, wr.eof)

    # --- kill -------------------------------------------------------------------------------

    async def kill(self, req: Request) -> None:
        # Once shutting down, the manager's connection is on its way out: say
        # so (job-exec reads ENOSYS as "not loaded"), not that systemd is gone.
        if self.shutting_down:
            raise SdexecError(errno.ENOSYS, self.shutdown_reason)
        kr = rfc42.parse_kill(req.payload())
        # ESRCH for any target Flux's servers cannot find: Flux's clients read
        # it as "reaped meanwhile" (flux sproc kill --wait, after its wait).
        proc = self.lookup(kr.target, errno.ESRCH, requester=req)
        if proc.lost is not None:
            raise SdexecError(errno.ESRCH, f"process {kr.target} was lost: {proc.lost.message}")
        if proc.state is ProcState.EXITED:
            raise SdexecError(errno.ESRCH, f"No such process: {kr.target} has already exited")
        who = "main" if proc.local_flags & LocalFlag.NO_SETPGRP else "all"
        log.info("kill", signum=kr.signum, who=who, requester=req.userid, **proc.log_fields())
        await self.bus.kill(proc.unit, kr.signum, who)
        req.respond({})

    # --- wait -------------------------------------------------------------------------------

    def wait(self, req: Request) -> None:
        """RFC 42 ``wait``: one waiter at a time (EINVAL for a second, as Flux
        says), and none while a client is attached (EBUSY): the attach would
        reap the process too.  Followers (``attach`` with ``follow``) do not count."""
        if self.shutting_down:
            raise SdexecError(errno.ENOSYS, self.shutdown_reason)
        target = rfc42.parse_target(req.payload(), "wait")
        proc = self.lookup(target, requester=req)
        if not proc.waitable:
            raise SdexecError(errno.EINVAL, f"process {target} is not waitable")
        if proc.waiter is not None:
            raise SdexecError(errno.EINVAL, f"process {target} is already being waited on")
        if proc.attached_client is not None:
            raise SdexecError(errno.EBUSY, f"process {target} has a client attached")
        proc.waiter = req
        log.info("wait", requester=req.userid, **proc.log_fields())
        if proc.state is ProcState.EXITED:
            proc._maybe_end()
