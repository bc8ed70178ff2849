"""The server's authentication step between the transport and the router.

Theory of operation
-------------------
The router hands every request to :meth:`Gate.submit` instead of
dispatching it.  A request whose topic is not an RFC 42 method passes
straight through.  For an RFC 42 request the gate applies
:class:`~sdexec.security.policy.RequestRules`; a refused request gets its
error response from the router (and is logged with uid, topic and reason),
except ``write``, which has no response: a refused ``write`` is dropped
silently (RFC 42 "Request Authentication"), and logged.  An accepted signed
request is dispatched with the *signed* object as its payload
(``Request.signed``) and the signer recorded (``Request.signer``).

``none`` signatures are checked inline.  A ``munge`` signature needs a
round trip to ``munged``, so it is verified in a small thread pool owned by
the gate; meanwhile, later requests from the same connection wait in that
connection's queue, so requests are still dispatched in the order they were
sent (a ``write`` never overtakes its ``exec``).  The queue is worked by one
task per connection, owned by the router's TaskGroup; when it grows past
:data:`HOLD_BACKLOG`, the gate stops reading from that connection until it
drains.  Requests queued for a connection that has gone away are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sdexec.base.errors import SdexecError
from sdexec.base.ratelimit import LogLimiter
from sdexec.security.policy import Admission, RequestRules, SecurityConfig
from sdexec.security.replaylog import ReplayLog
from sdexec.security.sign import Unwrapped

if TYPE_CHECKING:
    from sdexec.broker.request import Request
    from sdexec.broker.router import Router
    from sdexec.transport.unix import Connection

log = structlog.get_logger("sdexec.security")

#: Queued requests per connection beyond which reading from it pauses.
HOLD_BACKLOG = 64
#: Refused connections are logged once per this many seconds per uid and errno.
REFUSAL_LOG_INTERVAL = 10.0
_HOLD = "verify"


class Gate:
    """Applies the authentication rules to each request before dispatch."""

    def __init__(self, router: Router, config: SecurityConfig, *, threads: int = 4) -> None:
        self.router = router
        self.config = config
        self.rules = RequestRules(config)
        self.replay_log: ReplayLog | None = None
        if config.replay_file:
            self.replay_log = ReplayLog(Path(config.replay_file), config.sign_ttl)
            kept = self.replay_log.load(self.rules.replay, time.time())
            self.rules.on_accept = self.replay_log.append
            log.info("replay cache loaded", signatures=kept, path=config.replay_file)
        self.admission = Admission(config)
        self.queues: dict[str, collections.deque[Request]] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._threads = threads
        self.accepted = 0
        self.refused = 0
        self._write_topic = f"{config.service}.write"
        self._refusals = LogLimiter(REFUSAL_LOG_INTERVAL)

    def install(self) -> None:
        """Hook the gate into the router: handshake admission and every request."""
        self.router.admission = self.admit
        self.router.gate = self.submit
        self.router.disconnect_hooks.append(self.admission.release)

    # --- entry points (called by the router) ---------------------------------------

    def admit(self, conn: Connection) -> int:
        """The handshake byte for a new connection: 0, EPERM or EAGAIN."""
        errnum, reason = self.admission.admit(conn.id, conn.uid, evict=self.router.evict_idle)
        if errnum:
            held = self._refusals.allow((conn.uid, errnum))  # a flood must not fill the disk
            if held is not None:
                log.warning(
                    "connection refused",
                    uid=conn.uid,
                    peer_pid=conn.pid,
                    errnum=errnum,
                    reason=reason,
                    **({"similar_not_logged": held} if held else {}),
                )
        return errnum

    def submit(self, req: Request) -> None:
        conn_id = req.conn.id
        queue = self.queues.get(conn_id)
        if queue is not None:
            queue.append(req)
            if len(queue) > HOLD_BACKLOG:
                req.conn.hold(_HOLD)
            return
        try:
            signature = self._precheck(req)
            if signature is not None and self.rules.needs_thread(signature):
                self.queues[conn_id] = collections.deque([req])
                self.router.spawn(self._work(conn_id), "signature verification")
                return
            if signature is not None:
                self._accept(req, self.rules.verify(signature))
        except SdexecError as exc:
            self._refuse(req, exc)
            return
        self.router.dispatch(req)

    def close(self) -> None:
        """Stop the verification threads, close the replay log (at server shutdown)."""
        if self.replay_log is not None:
            self.replay_log.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # --- steps --------------------------------------------------------------------------

    def _precheck(self, req: Request) -> str | None:
        if not self.rules.guarded(req.topic):
            return None
        if req.msg.payload is None:  # e.g. a bare list: nothing to verify
            return self.rules.precheck(req.topic, {})
        if req.topic == self._write_topic and req.fast_write() is not None:
            # stdin's hot path: exactly matchtag and io (jsonio.parse_write), so no signature
            return self.rules.precheck(req.topic, {})
        payload: dict[str, Any] = req.msg.json()  # EPROTO if not a JSON object
        return self.rules.precheck(req.topic, payload)

    def _accept(self, req: Request, unwrapped: Unwrapped) -> None:
        accepted = self.rules.admit(req.topic, req.userid, unwrapped)
        req.signed = accepted.payload
        req.signer = accepted.signer
        self.accepted += 1
        log.debug(
            "signature accepted",
            uid=req.userid,
            topic=req.topic,
            signer=accepted.signer,
            mechanism=accepted.mechanism,
        )

    def _refuse(self, req: Request, exc: SdexecError) -> None:
        self.refused += 1
        errnum = exc.errno or errno.EPERM
        if req.topic == f"{self.config.service}.write":
            log.info(
                "request refused",
                uid=req.userid,
                topic=req.topic,
                errnum=errnum,
                reason=exc.message,
                action="dropped",
            )
            return
        self.router.refuse(req, errnum, exc.message)

    async def _verify_in_thread(self, signature: str) -> Unwrapped:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._threads, thread_name_prefix="sdexec-verify"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.rules.verify, signature)

    async def _work(self, conn_id: str) -> None:
        """Drain one connection's queue in order, verifying munge signatures off-loop."""
        queue = self.queues[conn_id]
        conn = queue[0].conn
        try:
            while queue:
                req = queue[0]
                if req.connected:
                    await self._one(req)
                queue.popleft()
        finally:
            del self.queues[conn_id]
            if queue:
                log.debug("queued requests dropped", uid=conn.uid, count=len(queue))
            conn.unhold(_HOLD)

    async def _one(self, req: Request) -> None:
        try:
            signature = self._precheck(req)
            if signature is not None:
                if self.rules.needs_thread(signature):
                    unwrapped = await self._verify_in_thread(signature)
                else:
                    unwrapped = self.rules.verify(signature)
                if not req.connected:
                    return
                self._accept(req, unwrapped)
        except SdexecError as exc:
            self._refuse(req, exc)
            return
        self.router.dispatch(req)
