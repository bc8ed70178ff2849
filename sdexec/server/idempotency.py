"""Idempotent execs: a retry with the same ``SDEXEC_IDEMPOTENCY_KEY`` starts nothing.

A client that lost its connection while an exec was in flight may send it
again with the same key (per requester uid).  The process it started, or its
record once it has been reaped (:mod:`sdexec.server.statefile`), answers
instead: a background exec's repeat gets the ``started`` response it missed,
any other is EEXIST saying what became of the first.
"""

from __future__ import annotations

import errno

import structlog

from sdexec.base.errors import SdexecError
from sdexec.broker.request import Request
from sdexec.proto import rfc42
from sdexec.server.process import ProcState
from sdexec.server.table import ProcessTable

log = structlog.get_logger("sdexec.service")


class Idempotency(ProcessTable):
    """Answers an exec whose idempotency key was used already."""

    def _repeat(self, req: Request, key: str) -> bool:
        """Answer an exec whose idempotency key was used already (True); False: a new one.

        A background exec's repeat gets the ``started`` response of the
        process it started (with ``repeat``, and ``ended`` once it has been
        reaped), so a client that lost its connection learns the pid; any
        other repeat is EEXIST, saying what became of that exec.  Nothing is
        ever started twice for one key (per requester uid).
        """
        uid = req.userid
        proc = self.by_key.get((uid, key))
        if proc is not None:
            if proc.background and not req.streaming:
                if proc.state is ProcState.STARTING:
                    raise SdexecError(
                        errno.EAGAIN, f"the exec of idempotency key {key} is still starting"
                    )
                log.info("exec repeated", key=key, requester=uid, **proc.log_fields())
                req.respond({**rfc42.started(proc.pid), "repeat": True})
                return True
            what = "running" if proc.state is not ProcState.EXITED else "finished"
            raise SdexecError(
                errno.EEXIST,
                f"idempotency key {key} belongs to a {what} exec (pid {proc.pid}, unit "
                f"{proc.unit}); it is not started again",
            )
        gone = self.state.find_key(uid, key)
        if gone is None:
            return False
        if not gone.foreground and not req.streaming and gone.pid:
            log.info("exec repeated", key=key, requester=uid, pid=gone.pid, unit=gone.unit)
            req.respond({**rfc42.started(gone.pid), "repeat": True, "ended": True})
            return True
        if gone.how is not None:
            how = gone.how
        elif gone.status is not None:
            how = rfc42.describe_status(gone.status)
        else:
            how = "ended"
        raise SdexecError(
            errno.EEXIST,
            f"idempotency key {key} belongs to an exec that was started already "
            f"(pid {gone.pid or 'unknown'}: {how}); it is not started again",
        )
