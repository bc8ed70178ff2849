"""One subprocess: a systemd unit, its pipes, and the client streams watching it.

Theory of operation
-------------------
A :class:`Process` is the :class:`~sdexec.systemd.bus.UnitListener` for its
unit.  D-Bus signals are folded by a
:class:`~sdexec.systemd.unitstate.UnitTracker` into lifecycle events, and the
process turns each event into RFC 42 responses *synchronously*, so that
``started`` always precedes output and ``finished`` even when systemd reports
both in one burst.

State is a small table (:class:`ProcState`)::

    STARTING --started--> RUNNING <--stop/cont--> STOPPED
        |                    |
        +--exec failed--> (gone)    +--finished--> EXITED --wait/attach--> (reaped)

A streaming ``exec`` client receives ``output`` for each forwarded stream
from the unit's pipes, ``finished``, and ENODATA once the process has
finished *and* every forwarded stream has reached EOF.

A background process's output never passes through the server (see
:mod:`sdexec.server.outputlog`).  One RFC 42 ``attach`` client at a time,
and any number of *followers* (an sdexec extension of ``attach``) beside
it, follow it, each on its own: it gets ``attached``, then the stored
output of the streams it asked for replayed and followed live, ``stopped``
when the process is stopped, and — once the process has finished and its
output has all been read back — the EOFs of those streams, ``finished``
and ENODATA.  At most one of them holds the
process's input (the attach request's ``stdin``): its ``write`` requests,
named by the attach's matchtag, go to the process's channels.  When an
attached client goes away the process simply goes on in the background.

A background *terminal* (``exec --bg --pty``) has a holder of its pty
(:mod:`sdexec.unit.pty_holder`) instead of stored output.  Each attach
stream connects to the holder (:class:`~sdexec.server.pty.TerminalLink`)
and gets, as ``stdout`` output, a redraw of the current screen and then
what the program writes; once the holder says the terminal is closed and
the unit has finished, the EOFs and ``finished`` as above.  The stream that
holds the input is the terminal's one writer: its ``stdin`` writes are
typed into the terminal (with credit, whatever the exec flags said) and its
``pty.winsize`` writes set the window size; an attach that asks for the
terminal (``terminal``) takes the input over from the writer before it,
whose stream ends (see :meth:`Process.take_over`).

Reaping (forgetting a finished process): a streaming exec's process when
its stream ends, a waitable one when ``wait`` has its status, any other
background one when it finishes.  The RFC 42 attach reaps a finished
waitable process; a follower (``sdexec attach``) does not, so ``wait``
still has the status after it.  Reaping never stops an
attach that is still replaying, and the output stays readable with
``logs`` (see :mod:`sdexec.server.statefile`, the history).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from sdexec.base.errors import SdexecError
from sdexec.proto import jsonio, pty, rfc42
from sdexec.proto.rfc42 import Command, ExecFlag, ExecOptions, LocalFlag
from sdexec.server.cpuset import check_cpus
from sdexec.server.outputlog import Barrier, LogRequest
from sdexec.server.pipes import InputPipe, OutputPipe
from sdexec.server.pty import Holder, TerminalLink
from sdexec.systemd.unitstate import Ambiguous, Event, ExecFailed, Finished, Started, UnitTracker

if TYPE_CHECKING:
    from sdexec.broker.request import Request, Sender
    from sdexec.broker.router import Router
    from sdexec.server.channels import AuxChannels
    from sdexec.server.outputlog import OutputLog
    from sdexec.server.pty import PtyInput
    from sdexec.systemd.bus import SystemdBus
    from sdexec.systemd.journal import Journal

log = structlog.get_logger("sdexec.proc")


class ProcState(enum.Enum):
    STARTING = "S"
    RUNNING = "R"
    STOPPED = "T"
    EXITED = "Z"


class ProcessOwner(Protocol):
    """What a process uses of the service that owns it (:class:`~sdexec.server.service.Service`).

    The service owns the process table, so this module says what a process
    needs of it instead of importing it.
    """

    @property
    def rank(self) -> int: ...

    @property
    def rank_str(self) -> str: ...

    @property
    def router(self) -> Router: ...  # events, and tasks the process starts

    @property
    def bus(self) -> SystemdBus: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def outputlog(self) -> OutputLog: ...

    @property
    def wait_output(self) -> int: ...  # bytes of output a wait response carries

    def proc_started(self, proc: Process) -> None: ...

    def proc_gone(self, proc: Process) -> None: ...

    def reap(self, proc: Process) -> None: ...

    def attach_ended(self, proc: Process, req: Request) -> None: ...


class Process:
    """A subprocess run as a transient unit."""

    def __init__(
        self,
        service: ProcessOwner,
        unit: str,
        cmd: Command,
        flags: ExecFlag,
        local_flags: LocalFlag,
        client: Request | None,
        options: ExecOptions | None = None,
    ) -> None:
        """``options``: the exec's, parsed (none for a process adopted from its record)."""
        self.service = service
        self.unit = unit
        self.cmd = cmd
        self.options = options if options is not None else ExecOptions()
        self.flags = flags
        self.local_flags = local_flags
        self.label = cmd.label
        self.client = client  # the streaming requester, if any
        self.background = client is None or not client.streaming
        self.sender: Sender | None = client.sender if client else None
        self.matchtag = client.matchtag if client else 0
        self.requester_uid = client.userid if client else -1
        #: The user this process works for when that is not its requester: a
        #: Flux job's shell, started by the instance owner through the IMP,
        #: works for the job's owner (sdexec.security.guest: that guest may see
        #: it, follow it and signal it).  None: nobody else, or not known yet.
        self.tenant_uid: int | None = None
        self.pid = 0
        self.status: int | None = None
        self.reason: str | None = None  # systemd's Result, when the status does not tell it
        self.state = ProcState.STARTING
        self.tracker = UnitTracker()
        self.outputs: dict[str, OutputPipe] = {}
        self.stdin: InputPipe | None = None
        self.ident = cmd.label or unit  # journal identifier of background output
        self.attachers: list[Attacher] = []  # attach streams, oldest first
        self.stdin_holder: Request | None = None  # the attach stream whose writes go in
        self.waiter: Request | None = None
        self.reaped = False
        self.warnings: list[str] = []  # told to the requester with "started"
        self.started_at = 0.0  # seconds since the epoch (0: not known)
        self._held: list[tuple[str, Any]] | None = None  # see hold_signals
        self.ended_at = 0.0
        self._writable_hooked = False
        self._early_credit = 0  # stdin drained before `started` could be sent
        self.aux: AuxChannels | None = None  # channels, msgchans (sdexec.server.channels)
        #: When all a background process wrote is in its log (see _answer_wait).
        self.barrier: Barrier | None = None
        self._answering = False  # a wait's answer is being prepared
        # The armed stop timer (SDEXEC_STOP_TIMER_SEC/_SIGNAL: self.options.stop_timer).
        self._stop_handle: asyncio.TimerHandle | None = None
        self.timed_out = False
        # The CPUs the unit must be confined to (AllowedCPUs from a resource
        # map), checked when it starts; and why that check failed.
        self.expected_cpus: set[int] | None = None
        self.check_error: str | None = None
        self.active_state = "unknown"  # the unit's, as the last signal said
        self.sub_state = "unknown"
        #: Why the outcome is unknown (the systemd manager died): EXITED with no status.
        self.lost: SdexecError | None = None
        self.key: str | None = None  # the client's idempotency key (SDEXEC_IDEMPOTENCY_KEY)
        self.pty: PtyInput | None = None  # a pty is its stdio; also self.stdin (sdexec.server.pty)
        self.holder: Holder | None = None  # a background terminal's holder (sdexec.server.pty)
        # SDEXEC_WAITABLE_WHILE_CONNECTED: waitable only while the connection
        # that started it lasts; once that is gone, its status is owed to
        # nobody and it is reaped as it ends (reap_when_done).
        self.wait_scoped = False
        self.reap_when_done = False

    # --- identity -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return os.path.basename(self.cmd.cmdline[0])

    @property
    def starting(self) -> bool:
        """Not started yet (the unit is being created)."""
        return self.state is ProcState.STARTING

    @property
    def terminal(self) -> bool:
        """Its standard input, output and error are a pty."""
        return self.pty is not None or self.holder is not None

    @property
    def waitable(self) -> bool:
        return bool(self.flags & ExecFlag.WAITABLE)

    @property
    def rank(self) -> str:
        return self.service.rank_str

    def log_fields(self) -> dict[str, Any]:
        return {"unit": self.unit, "label": self.label, "pid": self.pid, "uid": self.requester_uid}

    def event_payload(self) -> dict[str, Any]:
        """The payload of this process's lifecycle events (``sdexec.proc.*``)."""
        return {
            "pid": self.pid,
            "label": self.label,
            "status": self.status,
            "rank": self.service.rank,
        }

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        """A lifecycle event, seen by the trusted uids and the process's own requester."""
        self.service.router.publish(topic, payload, uid=self.requester_uid)

    # --- UnitListener ------------------------------------------------------------------

    def hold_signals(self) -> None:
        """Keep the unit's signals until StartTransientUnit has answered.

        The match is added before the unit is started (early transitions
        would be missed otherwise), so when the start is refused because the
        name is another unit's, that unit's signals came in under our name:
        they must not become this process's ``started``.
        """
        self._held = []

    def start_accepted(self) -> None:
        """The unit is ours: the signals held so far are its own."""
        held, self._held = self._held, None
        for kind, arg in held or ():
            if kind == "service":
                self.service_changed(arg)
            elif kind == "unit":
                self.unit_changed(arg)
            else:
                self.job_removed(arg)

    def service_changed(self, props: dict[str, Any]) -> None:
        if self._held is not None:
            self._held.append(("service", props))
            return
        self.tracker.service_changed(props)

    def unit_changed(self, props: dict[str, Any]) -> None:
        if self._held is not None:
            self._held.append(("unit", props))
            return
        self.active_state = str(props.get("ActiveState", self.active_state))
        self.sub_state = str(props.get("SubState", self.sub_state))
        if self.active_state == "deactivating":
            self._arm_stop_timer()
        for ev in self.tracker.unit_changed(props):
            self._event(ev)

    def job_removed(self, result: str) -> None:
        if self._held is not None:
            self._held.append(("job", result))
            return
        for ev in self.tracker.job_removed(result):
            self._event(ev)

    def _event(self, ev: Event) -> None:
        if isinstance(ev, Started):
            self._started(ev.pid)
        elif isinstance(ev, Finished):
            self._finished(ev.status, ev.reason)
        elif isinstance(ev, ExecFailed):
            self._exec_failed(ev.errnum, ev.message)
        elif isinstance(ev, Ambiguous):
            self.service.router.spawn(self._resolve(ev.finished), "exec failure lookup")

    async def _resolve(self, fin: Finished) -> None:
        """Exit 200-243 before the exec was seen: ask the journal whose code it is."""
        failure = await self.service.journal.spawn_failure(self.unit)
        if failure is not None:
            errnum, text, step = failure
            where = f"working directory {self.cmd.cwd or ''}".rstrip()
            subject = where if step == "CHDIR" else None
            self._exec_failed(errnum, text, subject)
        else:
            self._started(fin.pid)
            self._finished(fin.status, fin.reason)

    # --- lifecycle ------------------------------------------------------------------------

    def _started(self, pid: int) -> None:
        self.pid = pid
        self.state = ProcState.RUNNING
        self.started_at = self.started_at or time.time()
        self.service.proc_started(self)
        if self.expected_cpus is not None:
            problem = check_cpus(pid, self.expected_cpus)
            if problem is not None:
                self._start_check_failed(problem)
                return
        log.info("started", **self.log_fields())
        self._publish("sdexec.proc.started", self.event_payload())  # proxy: events
        client = self.client
        if client is not None:
            resp = rfc42.started(pid)
            if self.warnings:
                resp["warnings"] = list(self.warnings)  # sdexec extension: unenforced properties
            client.respond(resp)
            if self.terminal and self.flags & ExecFlag.STDERR:  # stderr is the terminal too
                client.respond(rfc42.output(pid, rfc42.io_object("stderr", self.rank, None, True)))
            if self.background:
                self.client = None  # a background exec gets exactly one response
            elif self.flags & ExecFlag.WRITE_CREDIT and self.stdin is not None:
                client.respond(rfc42.add_credit({"stdin": self.options.stdin_bufsize}))
                if self._early_credit:
                    client.respond(rfc42.add_credit({"stdin": self._early_credit}))
                    self._early_credit = 0
        self._hook_writable()
        for pipe in self.outputs.values():
            pipe.release()  # what it wrote before `started` could be sent, then the rest
        self._flow()
        if self.aux is not None:  # channel credit (sdexec.server.channels)
            self.aux.started()

    def _start_check_failed(self, problem: str) -> None:
        """The unit runs unconfined: kill it; the requester gets EIO once it is gone."""
        log.error("post-start check failed", reason=problem, **self.log_fields())
        self.check_error = problem
        self._close_pipes()  # its output is not the requester's to see
        self.service.router.spawn(self.service.bus.kill(self.unit, 9, "main"), "post-start kill")

    def _finished(self, status: int, reason: str | None = None) -> None:
        self.cancel_stop_timer()
        if self.check_error is not None:
            self.service.bus.unwatch(self.unit)
            self.status = status
            self.state = ProcState.EXITED
            for req in (self.client, self.waiter):
                if req is not None:
                    req.error(errno.EIO, self.check_error)
            self.client = self.waiter = None
            self.service.reap(self)
            return
        self.status = status
        self.reason = reason
        self.state = ProcState.EXITED
        self.ended_at = self.ended_at or time.time()
        self.service.bus.unwatch(self.unit, self)
        told = {"reason": reason} if reason else {}
        log.info("finished", **rfc42.status_fields(status), **told, **self.log_fields())
        if self.background:  # the line Flux's servers log, which Flux's tests and users read
            log.info(rfc42.end_line(self.label, self.name, self.pid, status), unit=self.unit)
        self._publish("sdexec.proc.finished", self.event_payload())  # proxy: events
        if self.stdin is not None:
            self.stdin.close()
        # Attach streams send finished themselves, once all output is replayed.
        if self.client is not None:
            self.client.respond(rfc42.finished(self.pid, status, reason))
        for att in self.attachers:
            att.wake.set()
        self._maybe_end()

    def _exec_failed(self, errnum: int, message: str, subject: str | None = None) -> None:
        self.service.bus.unwatch(self.unit, self)
        log.info("exec failed", errnum=errnum, reason=message, **self.log_fields())
        self._close_pipes()
        if self.client is not None:
            text = f"{subject}: {message}" if subject else f"{self.cmd.cmdline[0]}: {message}"
            self.client.error(errnum, text if subject else rfc42.LAUNCH_ERROR + text)
            self.client = None
        self.service.proc_gone(self)

    def _maybe_end(self) -> None:
        """Finish the client stream and reap, once everything has been delivered."""
        if self.state is not ProcState.EXITED:
            return
        if any(not p.eof for p in self.outputs.values()):
            return
        client = self.client
        if client is not None:
            client.end()
            self.client = None
            self._unhook_writable()
            if not self.background:
                self.service.reap(self)
                return
        if self.waiter is not None:
            if self.lost is not None:
                self.waiter.error(self.lost.errno or errno.EHOSTDOWN, self.lost.message)
            elif self.service.wait_output and self.background:
                if not self._answering:  # the output is read from the log first
                    self._answering = True
                    self.service.router.spawn(self._answer_wait(self.waiter), "wait output")
                return
            else:
                assert self.status is not None
                self.waiter.respond(self.wait_answer())
            self.waiter = None
            self.service.reap(self)
        elif not self.waitable or self.reap_when_done:
            self.service.reap(self)

    def wait_answer(self) -> dict[str, Any]:
        """``wait``'s response: the status, and (an extension) the reason when known."""
        answer: dict[str, Any] = {"status": self.status}
        if self.reason:
            answer["reason"] = self.reason
        return answer

    async def _answer_wait(self, waiter: Request) -> None:
        """Answer ``wait`` with the status and the last of the output (Flux's ``output``).

        A process started by this server has a barrier: once it says all the
        output is in the log, plain reads get it (JournalLog.last).  Otherwise (adopted
        after a restart, or the barrier could not tell) the log is followed
        until it has been quiet for a moment.
        """
        try:
            barrier, self.barrier = self.barrier, None
            settled = barrier is not None and await barrier.wait()
            kept = await self.service.outputlog.last(
                self.unit, self.ident, self.pid, self.service.wait_output, settled
            )
        finally:
            self._answering = False
        if self.waiter is not waiter:
            return  # the waiter went away meanwhile: the process stays waitable
        assert self.status is not None
        answer = self.wait_answer()
        if kept:
            answer["output"] = [rfc42.io_object(s, self.rank, d) for s, d in kept]
        waiter.respond(answer)
        self.waiter = None
        self.service.reap(self)

    # --- the systemd manager going away (sdexec.server.supervisor) ---------------

    def lose(self, err: SdexecError) -> None:
        """The unit went away with its manager: the outcome is ``err``, not a status."""
        self.lost = err
        self.state = ProcState.EXITED
        self.service.bus.unwatch(self.unit, self)
        log.warning("lost", reason=err.message, **self.log_fields())
        self._publish("sdexec.proc.lost", {**self.event_payload(), "reason": err.message})
        errnum = err.errno or errno.EHOSTDOWN
        client = self.client
        if client is not None:
            self._unhook_writable()
            client.error(errnum, err.message)
            self.client = None
        for att in list(self.attachers):
            att.req.error(errnum, err.message)
            self._drop_attacher(att)
        self._close_pipes()
        if not self.background:
            self.service.reap(self)
            return
        self._maybe_end()

    def fail_start(self, err: SdexecError) -> None:
        """The unit's manager went away before the start was confirmed."""
        self.service.bus.unwatch(self.unit, self)
        log.info("exec failed", errnum=err.errno, reason=err.message, **self.log_fields())
        self._close_pipes()
        if self.client is not None:
            self.client.error(err.errno or errno.EHOSTDOWN, err.message)
            self.client = None
        self.service.proc_gone(self)

    def resync(self, props: dict[str, Any]) -> None:
        """Catch up from a full property read, after signals may have been missed."""
        self.tracker.service_changed(props)
        if self.state is ProcState.STARTING:
            if props.get("ExecMainPID") or props.get("ActiveState") in ("active", "deactivating"):
                self.job_removed("done")
            elif props.get("ActiveState") == "failed":
                self.job_removed("failed")
        self.unit_changed(props)

    # --- output ---------------------------------------------------------------------------

    def output(self, stream: str, data: bytes, eof: bool) -> None:
        """Sink for an :class:`OutputPipe`: forward to the streaming client."""
        client = self.client
        if client is not None:
            # Encoded straight to JSON bytes, and written to the socket in pieces:
            # the hot path of output forwarding.
            client.respond_pieces(jsonio.output_pieces(self.pid, stream, self.rank, data, eof))
        if eof:
            self._maybe_end()

    def _hook_writable(self) -> None:
        if self.client is not None and not self._writable_hooked:
            self.client.conn.on_writable(self._on_writable)
            self._writable_hooked = True

    def _unhook_writable(self) -> None:
        if self._writable_hooked and self.client is not None:
            self.client.conn.remove_on_writable(self._on_writable)
        self._writable_hooked = False

    def _on_writable(self, writable: bool) -> None:
        self._flow()

    def _flow(self) -> None:
        """Read pipes only while the client can take more (output back-pressure)."""
        if self.state is ProcState.STARTING:
            return
        go = self.client is None or self.client.conn.writable
        for pipe in self.outputs.values():
            if go:
                pipe.resume()
            else:
                pipe.pause()

    # --- input ------------------------------------------------------------------------------

    def write(self, stream: str, data: bytes, eof: bool) -> None:
        if self.holder is not None:
            self._type(stream, data, eof)
            return
        if stream == pty.WINSIZE_STREAM:
            self._resize(data)
            return
        if self.aux is not None and self.aux.write(stream, data, eof):  # a channel
            return
        if stream != "stdin" or self.stdin is None:
            return  # unknown channels may be ignored (RFC 42 "write")
        if data:
            self.stdin.write(data)
        if eof:
            self.stdin.write_eof()

    def _type(self, stream: str, data: bytes, eof: bool) -> None:
        """The writer's input to a background terminal: to the holder, on its link."""
        link = next((a.link for a in self.attachers if a.req is self.stdin_holder), None)
        if link is None:
            return
        if stream == pty.WINSIZE_STREAM:
            try:
                link.send_winsize(*pty.parse_winsize(data.decode("ascii", "replace")))
            except OSError as exc:
                log.info("window size dropped", reason=str(exc), **self.log_fields())
            return
        if stream != "stdin":
            return
        if data:
            link.send_input(data)
        if eof:
            link.send_eof()

    def _resize(self, data: bytes) -> None:
        if self.pty is None:
            return  # not a terminal: ignored, like any unknown channel
        try:
            cols, rows = pty.parse_winsize(data.decode("ascii", "replace"))
        except OSError as exc:
            log.info("window size dropped", reason=str(exc), **self.log_fields())
            return
        self.pty.resize(cols, rows)

    def credit(self, n: int) -> None:
        client = self.client if self.client is not None else self.stdin_holder
        if client is None or not self.flags & ExecFlag.WRITE_CREDIT:
            return
        if self.state is ProcState.STARTING:
            self._early_credit += n
        else:
            client.respond(rfc42.add_credit({"stdin": n}))

    # --- stored output ----------------------------------------------------------------------

    async def send_log(
        self,
        req: Request,
        *,
        tail: int | None,
        follow: bool,
        ended: Callable[[], bool],
        current: Callable[[], bool] = lambda: True,
        since: str | None = None,
        timestamps: bool = False,
        streams: frozenset[str] = frozenset(("stdout", "stderr")),
    ) -> None:
        """Send the stored output to ``req`` as ``output`` responses (while
        ``current()``), at the pace its connection drains; following, until
        ``ended()`` and the log is quiet.  ``timestamps``: each response also
        says when its line was written (see :func:`log_output`).  ``streams``:
        the streams sent (the others are read and skipped)."""

        def sink(stream: str, data: bytes, when: float | None) -> None:
            if current() and stream in streams:
                req.respond(log_output(self.pid, stream, self.rank, data, when, timestamps))

        async def drain() -> None:
            await req.conn.wait_writable()

        await self.service.outputlog.follow(
            LogRequest(
                self.unit,
                self.ident,
                sink,
                ended,
                tail,
                follow,
                drain,
                self.pid,
                gone=lambda: not req.connected or not current(),
                since=since,
            )
        )

    # --- attach ------------------------------------------------------------------------------

    def attach(
        self,
        req: Request,
        *,
        stdin: bool,
        exclusive: bool,
        streams: frozenset[str],
        winsize: tuple[int, int] | None = None,
    ) -> Coroutine[Any, Any, None]:
        """Add an attach stream; returns its follower, to run in the request's task.

        ``exclusive``: the RFC 42 attach (its end reaps a waitable process);
        otherwise a follower.  ``streams``: the output streams it forwards.
        ``winsize``: a background terminal's new window size, set before its
        screen is drawn for this stream, if the stream is its writer.
        """
        att = Attacher(req, exclusive, streams)
        self.attachers.append(att)
        if stdin:
            self.stdin_holder = req
        resp = rfc42.attached(self.pid, int(self.flags), self.cmd)
        if stdin:
            resp["stdin"] = True
        if self.terminal:
            resp["pty"] = True
        if self.holder is not None:
            size = self.options.stdin_bufsize
            att.link = TerminalLink(
                self.holder.path,
                lambda n: self._terminal_credit(att, n),
                size=size,
            )
        req.respond(resp)
        log.info(
            "attach",
            requester=req.userid,
            stdin=stdin,
            follow=not exclusive,
            attached=len(self.attachers),
            **self.log_fields(),
        )
        self._publish("sdexec.proc.attached", self.event_payload())
        if self.state is ProcState.STOPPED:
            req.respond(rfc42.stopped(self.pid))
        if att.link is not None:
            return self._follow_terminal(att, stdin, winsize)
        # A finished process's output is replayed too, before its EOFs: the
        # RFC's required responses all come, and the operator sees the output.
        return self._follow(att, follow=self.state is not ProcState.EXITED)

    @property
    def attached_client(self) -> Request | None:
        """The RFC 42 attach (not a follower) streaming this process, if any."""
        return next((a.req for a in self.attachers if a.exclusive), None)

    async def _follow_terminal(
        self, att: Attacher, writer: bool, winsize: tuple[int, int] | None
    ) -> None:
        """Relay a background terminal's screen and output from its holder."""
        req, link = att.req, att.link
        assert link is not None
        hello: dict[str, Any] = {"mode": "attach", "writer": writer}
        if writer and winsize is not None:
            hello["winsize"] = list(winsize)
        try:
            await link.open(hello)
        except OSError as exc:
            # The holder is gone: the terminal has hung up, or ended long ago.
            log.info("terminal holder unreachable", reason=str(exc), **self.log_fields())
            link.close()
        if writer and not link.closed and att in self.attachers:
            req.respond(rfc42.add_credit({"stdin": self.options.stdin_bufsize}))
        try:
            while att in self.attachers:
                packet = await link.receive()
                if not packet or packet[:1] == b"e":
                    break
                if packet[:1] == b"o" and "stdout" in att.streams:
                    self._screen_output(req, link.text(packet[1:]))
                if not req.conn.writable:
                    await req.conn.wait_writable()
            tail = link.flush_text()
            if "stdout" in att.streams:
                self._screen_output(req, tail)
        finally:
            link.close()
        while att in self.attachers and self.state is not ProcState.EXITED:
            att.wake.clear()
            await att.wake.wait()
        if att in self.attachers:
            self._attach_done(att)

    def _screen_output(self, req: Request, data: bytes) -> None:
        if data:
            req.respond_pieces(jsonio.output_pieces(self.pid, "stdout", self.rank, data, False))

    def _terminal_credit(self, att: Attacher, n: int) -> None:
        if att.req is self.stdin_holder and att in self.attachers:
            att.req.respond(rfc42.add_credit({"stdin": n}))

    def take_over(self, by: Request, target: str) -> None:
        """``by`` takes the input over: the stream that held it ends (EBUSY, and why)."""
        old = self.stdin_holder
        if old is None:
            return
        log.info("terminal taken over", requester=by.userid, **self.log_fields())
        old.error(errno.EBUSY, f"process {target}: another client took the terminal over")
        self.detach(old)

    async def _follow(self, att: Attacher, follow: bool) -> None:
        req = att.req
        await self.send_log(
            req,
            tail=None,
            follow=follow,
            ended=lambda: (
                self.state is ProcState.EXITED or att not in self.attachers or not req.connected
            ),
            current=lambda: att in self.attachers,
            streams=att.streams,
        )
        if att in self.attachers:
            self._attach_done(att)

    def _attach_done(self, att: Attacher) -> None:
        req = att.req
        if self.lost is not None:
            req.error(self.lost.errno or errno.EHOSTDOWN, self.lost.message)
            self._drop_attacher(att)
            return
        assert self.status is not None
        for stream in ("stdout", "stderr"):
            if stream in att.streams:
                req.respond(rfc42.output(self.pid, rfc42.io_object(stream, self.rank, None, True)))
        req.respond(rfc42.finished(self.pid, self.status, self.reason))
        req.end()
        self._drop_attacher(att)
        if att.exclusive and self.waitable and not self.reaped:
            self.service.reap(self)  # RFC 42: a finished attach reaps the process

    def detach(self, req: Request) -> None:
        """An attach stream's client went away: the process goes on without it."""
        for att in self.attachers:
            if att.req is req:
                log.info("detach", **self.log_fields())
                self._publish("sdexec.proc.detached", self.event_payload())
                self._drop_attacher(att)
                return

    def _drop_attacher(self, att: Attacher) -> None:
        self.attachers.remove(att)
        if self.stdin_holder is att.req:
            self.stdin_holder = None
        if att.link is not None:
            att.link.close()
        att.wake.set()
        self.service.attach_ended(self, att.req)

    @property
    def watched(self) -> bool:
        """A client streams this process's events (``stopped`` is polled for it)."""
        return bool(self.attachers) or (self.client is not None and self.client.streaming)

    # --- stopped (SIGSTOP is invisible on D-Bus: read /proc) -------------------------

    def poll_stopped(self) -> None:
        """Called periodically while a client watches: report SIGSTOP as ``stopped``."""
        if self.state not in (ProcState.RUNNING, ProcState.STOPPED) or not self.pid:
            return
        stopped = proc_state(self.pid) in ("T", "t")
        if stopped and self.state is ProcState.RUNNING:
            self.state = ProcState.STOPPED
            log.info("stopped", **self.log_fields())
            self._publish("sdexec.proc.stopped", self.event_payload())
            if self.client is not None:
                self.client.respond(rfc42.stopped(self.pid))
            for att in self.attachers:
                att.req.respond(rfc42.stopped(self.pid))
        elif not stopped and self.state is ProcState.STOPPED:
            self.state = ProcState.RUNNING
            log.info("continued", **self.log_fields())
            self._publish("sdexec.proc.continued", self.event_payload())

    # --- client going away -------------------------------------------------------------

    def detach_client(self) -> None:
        """The streaming (exec) client disconnected."""
        self._unhook_writable()
        self.client = None
        self._flow()

    def _close_pipes(self) -> None:
        for pipe in self.outputs.values():
            pipe.close()
        if self.stdin is not None:
            self.stdin.close()

    # --- the stop timer (SDEXEC_STOP_TIMER_SEC: a unit that will not stop) ----------

    def _arm_stop_timer(self) -> None:
        seconds, _signum = self.options.stop_timer
        if seconds is None or self._stop_handle is not None or self.timed_out:
            return
        loop = asyncio.get_running_loop()
        self._stop_handle = loop.call_later(seconds, self._stop_timer_kill)

    def _stop_timer_kill(self) -> None:
        seconds, signum = self.options.stop_timer
        assert seconds is not None
        log.warning("stop timeout, signalling", seconds=seconds, signum=signum, **self.log_fields())
        self.service.router.spawn(self.service.bus.kill(self.unit, signum, "main"), "stop timer")
        loop = asyncio.get_running_loop()
        self._stop_handle = loop.call_later(seconds, self._stop_timer_abandon)

    def _stop_timer_abandon(self) -> None:
        """Still not stopped after the signal: give the unit up, say EDEADLK."""
        self._stop_handle = None
        self.timed_out = True
        seconds, _ = self.options.stop_timer
        log.error(
            "abandoning unit after stop timeout", seconds=2 * (seconds or 0), **self.log_fields()
        )
        text = "SIGKILL timeout, unit may still be active"
        for req in (self.client, self.waiter):
            if req is not None:
                req.error(errno.EDEADLK, text)
        self.client = self.waiter = None
        self.service.bus.unwatch(self.unit)
        self.state = ProcState.EXITED
        self.service.reap(self)

    def cancel_stop_timer(self) -> None:
        if self._stop_handle is not None:
            self._stop_handle.cancel()
            self._stop_handle = None

    # --- stats (flux module stats sdexec) -----------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The unit's state and its stdio ends, as flux-core's module reports them."""

        def out(stream: str) -> dict[str, Any] | None:
            pipe = self.outputs.get(stream)
            if pipe is None:
                return None
            return {"local_fd": -1 if pipe.eof else pipe.fd, "remote_fd": -1, "eof": pipe.eof}

        stdin = self.stdin
        return {
            "state": f"{self.active_state}.{self.sub_state}",
            "pid": self.pid or -1,
            "in": None if stdin is None else {"local_fd": stdin.fd, "remote_fd": -1},
            "out": out("stdout"),
            "err": out("stderr"),
        }

    def release(self) -> None:
        self.cancel_stop_timer()
        self._unhook_writable()
        self._close_pipes()
        if self.aux is not None:  # channels, msgchans (sdexec.server.channels)
            self.aux.close()
        if self.barrier is not None:
            self.barrier.close()
            self.barrier = None


def log_output(
    pid: int, stream: str, rank: str, data: bytes, when: float | None, timestamps: bool
) -> dict[str, Any]:
    """An ``output`` response of stored output; with ``timestamps``, also ``timestamp``
    (an sdexec extension: seconds since the epoch when the line was written, if known)."""
    resp = rfc42.output(pid, rfc42.io_object(stream, rank, data))
    if timestamps and when is not None:
        resp["timestamp"] = round(when, 6)
    return resp


class Attacher:
    """One attach stream: its request, whether it is the RFC 42 attach (its
    end reaps the process) or a follower, the output streams it forwards,
    and, for a background terminal, its link to the holder."""

    __slots__ = ("exclusive", "link", "req", "streams", "wake")

    def __init__(self, req: Request, exclusive: bool, streams: frozenset[str]) -> None:
        self.req = req
        self.exclusive = exclusive
        self.streams = streams
        self.link: TerminalLink | None = None
        self.wake = asyncio.Event()  # the process finished, or the stream was dropped


def proc_state(pid: int) -> str:
    """The one-letter state of a process from /proc (``?`` if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return "?"
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3].decode() or "?"
