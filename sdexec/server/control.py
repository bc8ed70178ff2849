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
from sdexec.server.process import Process, ProcState
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
        who = "main" if await self._signals_main_only(proc) else "all"
        log.info("kill", signum=kr.signum, who=who, requester=req.userid, **proc.log_fields())
        await self.bus.kill(proc.unit, kr.signum, who)
        req.respond({})

    async def _signals_main_only(self, proc: Process) -> bool:
        """Whether a signal goes to the main process alone, not to the unit's every process.

        RFC 42 signals the process group unless the process was started
        without one (``NO_SETPGRP``).  A unit whose ``KillMode`` is
        ``process`` has a main process that manages the others, and they may
        not be the manager's to signal: job-exec starts a guest's job shell
        as ``IMP exec`` with it, and the IMP passes the signal on to the
        shell that runs as the guest.
        """
        if proc.local_flags & LocalFlag.NO_SETPGRP:
            return True
        return await self.bus.kill_mode(proc.unit) == "process"

    # --- wait -------------------------------------------------------------------------------

    def wait(self, req: Request) -> None:
        """RFC 42 ``wait``: one waiter at a time (EINVAL for a second, as Flux
        says), and none while a client is attached (EBUSY): the attach would
        reap the process too.  Followers (``attach`` with ``follow``) do not count."""
        if self.shutting_down:
            raise SdexecError(errno.ENOSYS, self.shutdown_reason)
        target = rfc42.parse_target(req.payload(), "wait")
        proc = self.lookup(target, requester=req, claim=True)
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
