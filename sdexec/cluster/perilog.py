"""Prolog and epilog runs: one script on many ranks, with deadlines and a report.

Theory of operation
-------------------
A site runs a *prolog* on every node of a job before it starts and an
*epilog* after it ends; a node whose script fails must be drained, with a
reason an operator can act on.  :class:`Perilog` runs the script on every
selected rank at once and supervises each rank with the same timeline::

    launch --timeout--> SIGTERM --kill-timeout--> SIGKILL --kill-timeout--> unkillable

A server that does not answer the signal within ``--kill-timeout`` (or, once
the script has ended and the deadline has passed, a simple request) is
``unresponsive`` ("server not responding"): the node's server is at fault,
not the script, and nothing is said about the script that the server
never reported.

The timeout counts from the launch of the run.  Each rank ends with one
:class:`~sdexec.cluster.outcome.Outcome`: ``ok``, ``exit N``, ``signal N`` (killed
by someone else), ``timeout`` (still running at the deadline, then stopped
by SIGTERM or SIGKILL: the detail says which), ``unkillable`` (still alive
after SIGKILL), ``unresponsive``, ``error`` (the script could not be
started) or ``unreachable``.

Output is kept where every background process's output is kept, by the
server, outside the client (:mod:`sdexec.server.outputlog`: the journal,
with the run's label as ``SYSLOG_IDENTIFIER``, or append-only files).  So
each rank's script is a :class:`ScriptRun`: a *background, waitable* unit
labelled ``sdexec-<phase>-<time>-<pid>``, started by a non-streaming
``sdexec.exec``; its output is read back with a following ``sdexec.logs``
(which ends once the process has ended and the log is quiet), its last
lines are read again until two reads agree (journald may lag behind the
process's exit on a busy node), and then its status is collected with
``sdexec.wait``, which lets the server forget the process.  The last 64 KiB
are kept for the report; all of it stays in the node's journal
(``journalctl -t LABEL``), so a failed prolog can be examined after the
fact.  If the run is interrupted, the scripts still running are sent
SIGKILL.  Each script is waitable only while this run's connection lasts
(``SDEXEC_WAITABLE_WHILE_CONNECTED``): a script left behind on a server that
stopped answering is forgotten when it ends, not kept finished for a
``wait`` that never comes.

The result is a :class:`~sdexec.cluster.perilog_report.Report` (sans-IO): every
rank's outcome, elapsed time and last lines, and the ranks to drain with a
one-line reason each (``node3: prolog timeout: still running after 30s,
stopped by SIGTERM``); ``--json`` prints its ``to_json()``.

Ownership: :meth:`Perilog.run` owns one TaskGroup with a supervisor task per
rank, which owns that rank's run task, which owns its log reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.client.exec import (
    EXEC_TOPIC,
    FLAG_STDERR,
    FLAG_STDOUT,
    FLAG_WAITABLE,
    WAIT_TOPIC,
    build_command,
    exec_payload,
)
from sdexec.client.rpc import RemoteError
from sdexec.cluster.fanout import DEFAULT_CONNECT_TIMEOUT, RankJob
from sdexec.cluster.hosts import Host
from sdexec.cluster.outcome import Kind, Outcome, from_status, signal_name
from sdexec.cluster.perilog_report import RankReport, Report, Tail, classify
from sdexec.proto.iodata import decode_io_data
from sdexec.proto.rfc42 import WAIT_SCOPE_OPTION

PHASES = ("prolog", "epilog")
DEFAULT_TAIL_LINES = 10
RANK_ENV = "SDEXEC_RANK"
PHASE_ENV = "SDEXEC_PERILOG_PHASE"
LOGS_TOPIC = "sdexec.logs"
CLEANUP_TIMEOUT = 2.0
# journald may still be writing a script's last lines when the server's log
# follow ends (it ends once the process has exited and the log has been quiet
# for a moment): the last lines are read again until two reads this far
# apart agree, for at most SETTLE_MAX seconds.
SETTLE_INTERVAL = 0.3
SETTLE_MAX = 3.0


class ScriptRun(RankJob):
    """One rank's script: a background waitable unit, its logs, then its status.

    :attr:`tail` holds the end of the script's output as the server's log
    replays it; ``on_change(run)`` is called when it starts and when it ends.
    """

    def __init__(
        self,
        host: Host,
        command: dict[str, Any],
        *,
        tail_lines: int = DEFAULT_TAIL_LINES,
        on_change: Callable[[ScriptRun], None] | None = None,
    ) -> None:
        super().__init__(host, on_change)
        self.command = command
        self.tail = Tail()
        self.tail_lines = tail_lines
        self.pid: int | None = None
        self.exited = asyncio.Event()  # the script has ended; its log may still be read

    @property
    def running(self) -> bool:
        return self.started.is_set() and not self.exited.is_set() and not self.done.is_set()

    async def _interrupted(self) -> None:
        if self.running and self._abandoned is None:
            await self._kill_quietly()

    async def _run(self, connect_timeout: float) -> Outcome:
        handle = await self._connect(connect_timeout)
        if isinstance(handle, Outcome):
            return handle
        flags = FLAG_STDOUT | FLAG_STDERR | FLAG_WAITABLE
        try:
            resp = await handle.rpc(EXEC_TOPIC, exec_payload(self.command, flags))
        except RemoteError as exc:
            return Outcome(Kind.ERROR, exc.errno or errno.EIO, exc.message)
        except SdexecError as exc:
            return self._lost(exc)
        pid = resp.get("pid")
        if resp.get("type") != "started" or not isinstance(pid, int):
            return Outcome(Kind.FAILED, errno.EPROTO, "the exec response has no pid")
        self.pid = pid
        self.started.set()
        self._changed()
        try:
            # The log ends once the process has ended and its output is all
            # read; only then is the status collected (which reaps it).
            if await self._follow_log():
                self.exited.set()  # the server's follow ends when the process has
                await self._settle_log()
            resp = await handle.rpc(WAIT_TOPIC, {"pid": pid})
            self.exited.set()
        except RemoteError as exc:
            return Outcome(Kind.FAILED, exc.errno or errno.EIO, f"server: {exc.message}")
        except SdexecError as exc:
            return self._lost(exc)
        status = resp.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            return Outcome(Kind.FAILED, errno.EPROTO, "the wait response has no status")
        return from_status(status)

    async def _follow_log(self) -> bool:
        """Read the output into :attr:`tail` as it comes, until the process has
        ended; False if the server could not give it (the status still counts)."""
        return await self._read_log({"pid": self.pid, "follow": True}, self.tail.feed)

    async def _read_log(self, payload: dict[str, Any], sink: Callable[[bytes], None]) -> bool:
        assert self.handle is not None
        stream = self.handle.stream(LOGS_TOPIC, payload)
        try:
            async for resp in stream:
                io = resp.get("io")
                if resp.get("type") == "output" and isinstance(io, dict):
                    sink(decode_io_data(io))
        except (RemoteError, ProtocolError):
            return False
        finally:
            stream.close()
        return True

    async def _last_lines(self) -> bytes:
        out = bytearray()
        payload = {"pid": self.pid, "follow": False, "tail": self.tail_lines}
        await self._read_log(payload, out.extend)
        return bytes(out)

    async def _settle_log(self) -> None:
        """Read the last lines again until journald has caught up (see SETTLE_*)."""
        if self.tail_lines <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_MAX
        previous = await self._last_lines()
        while loop.time() < deadline:
            await asyncio.sleep(SETTLE_INTERVAL)
            latest = await self._last_lines()
            if latest == previous:
                break
            previous = latest
        if previous:
            self.tail.replace(previous)

    async def kill(self, signum: int, within: float | None = None) -> bool | None:
        """Send ``signum`` to the script; True if the server did it (None: no answer)."""
        if not self.running:
            return False
        return await self._kill_pid(self.pid, signum, within)

    async def _kill_quietly(self) -> None:
        """Interrupted: a background script would outlive us, so stop it, and
        collect its status so that the server keeps nothing for us."""
        with contextlib.suppress(BaseException):
            if await self.kill(signal.SIGKILL, within=CLEANUP_TIMEOUT):
                assert self.handle is not None
                async with asyncio.timeout(CLEANUP_TIMEOUT):
                    await self.handle.rpc(WAIT_TOPIC, {"pid": self.pid})


def check_setup(hosts: Sequence[Host]) -> None:
    """Raise SdexecError for what is wrong on this node, before anything runs.

    A missing CURVE key or ssh command here would make every rank it
    concerns unreachable, and have it drained; it is the head node's
    configuration that is wrong, so it is one error, and nothing runs.
    """
    from sdexec.transport.connector import check_client

    for host in hosts:
        try:
            check_client(host.uri)
        except SdexecError as exc:
            text = f"{host.name} ({host.uri}): {exc.message}; nothing was run"
            raise SdexecError(exc.errno or errno.EINVAL, text) from None


class RankRun:
    """One rank of a run: its process, its output and what supervision did."""

    def __init__(self, proc: ScriptRun) -> None:
        self.proc = proc
        self.timed_out = False
        self.signals_sent: list[int] = []
        self.unkillable = False
        self.unresponsive: str | None = None  # why the server is taken as hung
        self.elapsed: float | None = None
        self.outcome: Outcome | None = None

    @property
    def host(self) -> Host:
        return self.proc.host

    @property
    def state(self) -> str:
        """connecting, running, or the outcome's kind once ended."""
        if self.outcome is not None:
            return self.outcome.kind.value
        return "running" if self.proc.started.is_set() else "connecting"


class Perilog:
    """One prolog or epilog run over ``hosts`` (see the module docstring)."""

    def __init__(
        self,
        hosts: Sequence[Host],
        phase: str,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        kill_timeout: float = 10.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        tail_lines: int = DEFAULT_TAIL_LINES,
        env: dict[str, str] | None = None,
        cwd: str | None = "/",
        label: str | None = None,
        on_change: Callable[[Perilog], None] | None = None,
        logs_options: str = "",
    ) -> None:
        if phase not in PHASES:
            raise SdexecError(errno.EINVAL, f"phase must be prolog or epilog, not {phase!r}")
        self.phase = phase
        self.timeout = timeout
        self.kill_timeout = kill_timeout
        self.connect_timeout = connect_timeout
        self.tail_lines = tail_lines
        self.label = label or f"sdexec-{phase}-{int(time.time())}-{os.getpid()}"
        self.on_change = on_change
        self.logs_options = logs_options  # for the report's "sdexec logs" command
        self.started_at = time.monotonic()
        base_env = dict(os.environ if env is None else env)
        self.runs: list[RankRun] = []
        for host in hosts:
            command = build_command(
                argv,
                env={**base_env, RANK_ENV: str(host.rank), PHASE_ENV: phase},
                cwd=cwd,
                opts={WAIT_SCOPE_OPTION: "yes"},
                label=self.label,
            )
            proc = ScriptRun(host, command, tail_lines=tail_lines, on_change=self._changed)
            self.runs.append(RankRun(proc))

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def counts(self) -> dict[str, int]:
        """How many ranks are in each state (connecting, running, ok, ...)."""
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.state] = out.get(r.state, 0) + 1
        return out

    def _changed(self, proc: ScriptRun) -> None:
        if self.on_change is not None:
            self.on_change(self)

    async def run(self) -> Report:
        """Run on every rank, supervise, and return the report."""
        self.started_at = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for r in self.runs:
                tg.create_task(self._supervise(r))
        ranks = [
            RankReport(
                r.host,
                r.outcome or Outcome(Kind.ERROR, errno.EIO),
                r.elapsed,
                r.proc.tail.lines(self.tail_lines),
            )
            for r in self.runs
        ]
        return Report(self.phase, self.label, ranks, self.elapsed(), self.logs_options)

    async def _supervise(self, r: RankRun) -> None:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(r.proc.run(self.connect_timeout))
            if self.timeout is not None:
                await self._deadlines(r, task)
        r.elapsed = self.elapsed()
        r.outcome = classify(
            r.proc.outcome,
            timed_out=r.timed_out,
            signals_sent=r.signals_sent,
            unkillable=r.unkillable,
            unresponsive=r.unresponsive,
            timeout=self.timeout,
            kill_timeout=self.kill_timeout,
        )
        self._changed(r.proc)

    async def _deadlines(self, r: RankRun, task: asyncio.Task[Outcome]) -> None:
        assert self.timeout is not None
        if await _ended(task, r.proc.exited, self.timeout - self.elapsed()):
            await self._finish(r, task)
            return
        r.timed_out = True
        if not r.proc.running:  # still connecting or starting: give up on it
            await r.proc.abandon(SdexecError(errno.ETIMEDOUT, "timed out before it started"))
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            delivered = await r.proc.kill(signum, within=self.kill_timeout)
            if delivered is None and not r.proc.exited.is_set() and not task.done():
                what = f"no answer to {signal_name(signum)} in {self.kill_timeout:g}s"
                await self._unresponsive(r, what)
                return
            if delivered:
                r.signals_sent.append(signum)
            if await _ended(task, r.proc.exited, self.kill_timeout):
                await self._finish(r, task)
                return
        r.unkillable = True
        await r.proc.abandon(SdexecError(errno.ETIMEDOUT, "unkillable"))

    async def _finish(self, r: RankRun, task: asyncio.Task[Outcome]) -> None:
        """The script has ended; its last output and status follow.  A server
        that stops answering now must not hold up the run: once past the
        deadline, it is asked a simple request every ``kill_timeout`` seconds."""
        assert self.timeout is not None
        while not task.done():
            wait = max(self.timeout - self.elapsed(), self.kill_timeout)
            await asyncio.wait([task], timeout=wait)
            if task.done():
                return
            if not await r.proc.responds(self.kill_timeout) and not task.done():
                await self._unresponsive(r, f"no answer in {self.kill_timeout:g}s")
                return

    async def _unresponsive(self, r: RankRun, what: str) -> None:
        r.unresponsive = what
        await r.proc.abandon(SdexecError(errno.ETIMEDOUT, "server not responding"))


async def _ended(task: asyncio.Task[Outcome], exited: asyncio.Event, delay: float) -> bool:
    """Wait up to ``delay`` seconds for the script to end; True if it has.

    The script has ended when ``exited`` is set, or when its run is over
    (reading its log afterwards is not part of its time).
    """
    if task.done() or exited.is_set():
        return True
    waiter = asyncio.ensure_future(exited.wait())
    try:
        await asyncio.wait([task, waiter], timeout=max(delay, 0), return_when="FIRST_COMPLETED")
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    return task.done() or exited.is_set()
