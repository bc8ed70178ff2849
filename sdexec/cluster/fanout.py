"""Run one command on many ranks at once (asyncio): connections, stdin, signals.

Theory of operation
-------------------
A fan-out is one :class:`RankProcess` per selected rank, all driven by one
event loop, so every connection is opened and every ``sdexec.exec`` request
sent at once: launching N ranks costs about one round trip, not N.  (The
single-rank CLI path stays on the blocking client, which starts without
importing asyncio; only the multi-rank path pays for the event loop.)

A :class:`RankProcess` owns its connection and its exec stream for the span
of :meth:`RankProcess.run`, which never raises for what happens on the
remote side: it ends with an :class:`~sdexec.cluster.outcome.Outcome` (ok, exit N,
signal, error, unreachable).  A server that does not answer within the
connect timeout, refuses the connection or drops it is *unreachable*, which
is not the same as a command that failed.

Standard input is broadcast with RFC 42 flow control for every rank
(:func:`broadcast_stdin`): a chunk is read from stdin only when every rank
that still takes input has credit for it, and the chunk is as large as the
smallest credit, so no rank is ever sent more than its server can buffer and
the slowest rank paces the others, as in ``flux exec``.  Ranks that finish
stop taking input; EOF is sent to all.  Stdin is read with ``add_reader``
where epoll allows it (pipes, terminals, sockets) and directly otherwise
(regular files and ``/dev/null``, which are always readable).

Signals are forwarded by :meth:`RankProcess.kill`, which holds a signal that
arrives before ``started`` until the process has a pid.

Ownership: the caller's ``asyncio.TaskGroup`` owns every task (one per rank,
the stdin pump, the signal pump); nothing is fire-and-forget.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.client.exec import (
    ADD_CREDIT,
    EXEC_TOPIC,
    FINISHED,
    KILL_TOPIC,
    OUTPUT,
    STARTED,
    STREAMING_FLAGS,
    WRITE_TOPIC,
    ExecSession,
)
from sdexec.client.handle import Handle, Stream
from sdexec.client.rpc import RemoteError
from sdexec.cluster.hosts import NODEID_ANY, Host
from sdexec.cluster.outcome import Kind, Outcome, from_status

DEFAULT_CONNECT_TIMEOUT = 10.0
_READ_SIZE = 64 * 1024

OutputCallback = Callable[["RankProcess", str, bytes, bool], None]


Prepare = Callable[[Handle], Awaitable[None]]


class RankHandle:
    """One rank of a Flux instance, through a broker connection shared by all ranks.

    Every request carries the rank's nodeid, so the broker routes it to that
    rank's sdexec; :meth:`close` gives the shared connection back (it closes
    when the last rank is done).
    """

    def __init__(self, shared: _Shared, nodeid: int) -> None:
        self._shared = shared
        self.nodeid = nodeid
        self._open = True

    @property
    def closed(self) -> bool:
        return not self._open or self._shared.handle.closed

    async def rpc(self, topic: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._shared.handle.rpc(topic, payload, nodeid=self.nodeid)

    def stream(self, topic: str, payload: dict[str, Any] | None = None) -> Stream:
        return self._shared.handle.stream(topic, payload, nodeid=self.nodeid)

    def send(self, topic: str, payload: dict[str, Any] | bytes | None = None) -> None:
        self._shared.handle.send(topic, payload, nodeid=self.nodeid)

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self._shared.release()


class _Shared:
    """A connection to one broker and the ranks that use it."""

    def __init__(self, handle: Handle, pool: dict[str, asyncio.Future[_Shared]], uri: str) -> None:
        self.handle = handle
        self.users = 0
        self._pool = pool
        self._uri = uri

    async def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._pool.pop(self._uri, None)
            await self.handle.close()


# Broker connections of the running event loop, by URI.
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future[_Shared]]] = (
    weakref.WeakKeyDictionary()
)


async def _shared(uri: str) -> _Shared:
    pool = _POOLS.setdefault(asyncio.get_running_loop(), {})
    future = pool.get(uri)
    if future is None:
        future = asyncio.get_running_loop().create_future()
        pool[uri] = future
        try:
            future.set_result(_Shared(await Handle.connect(uri), pool, uri))
        except BaseException as exc:
            pool.pop(uri, None)
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters get it too
            raise
    shared = await asyncio.shield(future)
    shared.users += 1
    return shared


AnyHandle = Handle | RankHandle


async def connect(
    host: Host, within: float = DEFAULT_CONNECT_TIMEOUT, prepare: Prepare | None = None
) -> AnyHandle:
    """A connection to ``host``'s server; SdexecError (ETIMEDOUT, ...) if none.

    ``prepare(handle)`` (request signing, for one) runs within the same time
    limit; if it fails, the connection is closed and the error raised.  A
    rank of a Flux instance (a host with a nodeid) shares one broker
    connection with the other ranks and is never signed: the broker
    authenticates every request itself.
    """
    if host.nodeid != NODEID_ANY:
        try:
            async with asyncio.timeout(within):
                return RankHandle(await _shared(host.uri), host.nodeid)
        except TimeoutError:
            raise SdexecError(
                errno.ETIMEDOUT, f"no answer from {host.uri} in {within:g}s"
            ) from None
    handle = None
    try:
        async with asyncio.timeout(within):
            handle = await Handle.connect(host.uri)
            if prepare is not None:
                await prepare(handle)
            return handle
    except BaseException as exc:
        if handle is not None:
            await handle.close()
        if isinstance(exc, TimeoutError):
            raise SdexecError(
                errno.ETIMEDOUT, f"no answer from {host.uri} in {within:g}s"
            ) from None
        raise


def unreachable(exc: SdexecError) -> Outcome:
    return Outcome(Kind.UNREACHABLE, exc.errno or errno.EIO, exc.message)


class RankJob:
    """What every per-rank job of a many-rank command shares.

    A job owns its connection (``handle``) for the span of :meth:`run`,
    which calls the subclass's ``_run`` and never raises for what happens on
    the remote side: it records an :class:`~sdexec.cluster.outcome.Outcome`, sets
    ``done``, closes the connection and calls ``on_change(job)``.
    :meth:`abandon` gives up on a rank from outside (a deadline); the run
    then ends as unreachable with the reason given.
    """

    def __init__(
        self, host: Host, on_change: Callable[[Any], None] | None, prepare: Prepare | None = None
    ) -> None:
        self.host = host
        self.on_change = on_change
        self.prepare = prepare
        self.handle: AnyHandle | None = None
        self.outcome: Outcome | None = None
        self.started = asyncio.Event()
        self.done = asyncio.Event()
        self._abandoned: SdexecError | None = None

    @property
    def rank(self) -> int:
        return self.host.rank

    async def run(self, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Outcome:
        """Run to the end; returns (and records) the rank's outcome."""
        try:
            self.outcome = await self._run(connect_timeout)
        except BaseException:
            await self._interrupted()
            raise
        finally:
            if self.outcome is None:  # cancelled
                self.outcome = Outcome(Kind.ERROR, errno.ECANCELED, "cancelled")
            self.done.set()
            self._ended()
            if self.handle is not None:
                await self.handle.close()
            self._changed()
        return self.outcome

    async def _run(self, connect_timeout: float) -> Outcome:
        raise NotImplementedError

    async def _interrupted(self) -> None:
        """Called when :meth:`run` is cancelled or fails, before the connection closes."""

    def _ended(self) -> None:
        """Called when :meth:`run` ends, however it ends."""

    async def _connect(self, connect_timeout: float) -> AnyHandle | Outcome:
        """Open :attr:`handle`; the unreachable outcome if that fails or the job
        was abandoned meanwhile."""
        try:
            self.handle = await connect(self.host, connect_timeout, self.prepare)
        except SdexecError as exc:
            return unreachable(exc)
        if self._abandoned is not None:
            return unreachable(self._abandoned)
        return self.handle

    def _lost(self, exc: SdexecError) -> Outcome:
        """The outcome of a connection lost mid-run: unreachable, for the reason
        the job was abandoned if it was."""
        return unreachable(self._abandoned or exc)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    async def abandon(self, reason: SdexecError) -> None:
        """Give up on this rank: close the connection (the server then kills a
        foreground process); the run ends with ``reason`` as unreachable."""
        self._abandoned = reason
        if self.handle is not None:
            await self.handle.close()

    async def _kill_pid(self, pid: int | None, signum: int, within: float | None) -> bool | None:
        """``sdexec.kill`` of ``pid``, waiting at most ``within`` for the answer
        (a hung server must not hold up a caller with deadlines of its own).

        True: delivered; False: not (gone already, the connection with it);
        None: the server did not answer within ``within`` seconds.
        """
        if pid is None or self.handle is None:
            return False
        try:
            async with asyncio.timeout(within):
                await self.handle.rpc(KILL_TOPIC, {"pid": pid, "signum": signum})
        except TimeoutError:
            return None
        except SdexecError:
            return False
        return True

    async def responds(self, within: float) -> bool:
        """Whether the server answers a request (``attr.get``) within ``within`` seconds."""
        if self.handle is None:
            return False
        try:
            async with asyncio.timeout(within):
                await self.handle.rpc("attr.get", {"name": "version"})
        except TimeoutError:
            return False
        except SdexecError as exc:
            return isinstance(exc, RemoteError)  # an answer, if not the one asked for
        return True


class RankProcess(RankJob):
    """One rank's remote process: connect, exec, stream I/O, end with an Outcome.

    ``on_output(proc, stream, data, eof)`` is called for each output response.
    ``on_change(proc)`` is called when the state changes (started, ended).
    With ``stdin=False`` EOF is sent as soon as the process starts.
    """

    def __init__(
        self,
        host: Host,
        command: Mapping[str, Any],
        *,
        flags: int = STREAMING_FLAGS,
        stdin: bool = True,
        on_output: OutputCallback | None = None,
        on_change: Callable[[RankProcess], None] | None = None,
        prepare: Prepare | None = None,
    ) -> None:
        super().__init__(host, on_change, prepare)
        self.session = ExecSession(command, flags=flags)
        self.stdin = stdin
        self.on_output = on_output
        self.stream: Stream | None = None
        self._credit = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.session.pid

    @property
    def running(self) -> bool:
        """Started and not yet ended."""
        return self.started.is_set() and not self.done.is_set()

    @property
    def accepting_stdin(self) -> bool:
        return self.running and not self.session.stdin_closed and self.stream is not None

    # --- the run ------------------------------------------------------------------------

    def _ended(self) -> None:
        self._credit.set()

    async def _run(self, connect_timeout: float) -> Outcome:
        handle = await self._connect(connect_timeout)
        if isinstance(handle, Outcome):
            return handle
        self.stream = handle.stream(EXEC_TOPIC, self.session.request())
        try:
            async for resp in self.stream:
                self._on_response(resp)
            return from_status(self.session.finish())
        except RemoteError as exc:
            if exc.errno == errno.EHOSTUNREACH:  # Flux: the rank's broker or module is gone
                return unreachable(exc)
            if self.session.pid is None:
                return Outcome(Kind.ERROR, exc.errno or errno.EIO, exc.message)
            return Outcome(Kind.FAILED, exc.errno or errno.EIO, f"server: {exc.message}")
        except ProtocolError as exc:
            return Outcome(Kind.FAILED, errno.EPROTO, exc.message)
        except SdexecError as exc:
            return self._lost(exc)

    def _on_response(self, resp: dict[str, Any]) -> None:
        event = self.session.feed(resp)
        if event is None:
            return
        if event.kind == OUTPUT:
            if self.on_output is not None and (event.data or event.eof):
                self.on_output(self, event.stream, event.data, event.eof)
        elif event.kind == STARTED:
            self.started.set()
            if not self.stdin:
                self.close_stdin()
            self._changed()
        elif event.kind in (ADD_CREDIT, FINISHED):
            self._credit.set()

    # --- stdin --------------------------------------------------------------------------

    async def wait_credit(self) -> None:
        """Return once stdin credit is available or the rank takes no more input."""
        while self.accepting_stdin and self.session.credit.available == 0:
            self._credit.clear()
            await self._credit.wait()

    def write(self, data: bytes) -> None:
        """Send ``data`` to stdin; it must fit the credit (see :meth:`wait_credit`)."""
        if self.accepting_stdin and self.handle is not None and self.stream is not None:
            payload = self.session.write_payload(self.stream.matchtag, data)
            with contextlib.suppress(SdexecError):
                self.handle.send(WRITE_TOPIC, payload)

    def close_stdin(self) -> None:
        """Send EOF on stdin (once)."""
        if self.accepting_stdin and self.handle is not None and self.stream is not None:
            payload = self.session.eof_payload(self.stream.matchtag)
            with contextlib.suppress(SdexecError):
                self.handle.send(WRITE_TOPIC, payload)

    # --- signals ------------------------------------------------------------------------

    async def wait_started(self) -> bool:
        """Wait until the process has started or the run has ended; True if running."""
        if not self.started.is_set() and not self.done.is_set():
            waiters = [asyncio.ensure_future(e.wait()) for e in (self.started, self.done)]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
        return self.running

    async def kill(self, signum: int, within: float | None = None) -> bool | None:
        """Deliver ``signum`` once the process runs; True if the server did it
        (None: it did not answer within ``within``)."""
        if not await self.wait_started():
            return False
        return await self._kill_pid(self.session.pid, signum, within)


# --- stdin broadcast ---------------------------------------------------------------------


class StdinReader:
    """Read a file descriptor from the event loop without changing its flags."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        try:
            self._loop.add_reader(fd, lambda: None)
        except (PermissionError, ValueError, OSError):
            self._pollable = False  # a regular file or /dev/null: always readable
        else:
            self._loop.remove_reader(fd)
            self._pollable = True

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at end of file (or on a read error)."""
        while True:
            if self._pollable:
                ready = asyncio.Event()
                self._loop.add_reader(self.fd, ready.set)
                try:
                    await ready.wait()
                finally:
                    self._loop.remove_reader(self.fd)
            try:
                return os.read(self.fd, size)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return b""


async def broadcast_stdin(procs: Sequence[RankProcess], reader: StdinReader) -> None:
    """Copy ``reader`` to every rank's stdin, paced by the smallest credit; then EOF."""
    for proc in procs:
        await proc.wait_started()
    while True:
        targets = [p for p in procs if p.accepting_stdin]
        if not targets:
            return
        for proc in targets:
            await proc.wait_credit()
        targets = [p for p in targets if p.accepting_stdin]
        if not targets:
            return
        size = min(min(p.session.credit.available for p in targets), _READ_SIZE)
        data = await reader.read(size)
        for proc in targets:
            if data:
                proc.write(data)
            else:
                proc.close_stdin()
        if not data:
            return


async def kill_all(procs: Iterable[RankProcess], signum: int) -> None:
    """Send ``signum`` to every rank's process, concurrently."""
    async with asyncio.TaskGroup() as tg:
        for proc in procs:
            if not proc.done.is_set():
                tg.create_task(proc.kill(signum))


# --- output ---------------------------------------------------------------------------


class LineLabeler:
    """Prefix each line of each rank's output with ``RANK: `` (``--label-io``),
    or with another label (the host name, ``--label-host``).

    Output arrives in arbitrary chunks; a partial line is held until its end
    (or the stream's EOF, when it is completed with a newline) so that lines
    from different ranks never mix.
    """

    def __init__(self) -> None:
        self._partial: dict[tuple[int, str], bytes] = {}

    def feed(
        self, rank: int, stream: str, data: bytes, eof: bool = False, label: str | None = None
    ) -> bytes:
        """The labelled complete lines that ``data`` finishes (``label``: instead of the rank)."""
        key = (rank, stream)
        buf = self._partial.pop(key, b"") + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        if eof and rest:
            lines.append(rest)
            rest = b""
        if rest:
            self._partial[key] = rest
        prefix = f"{rank if label is None else label}: ".encode()
        return b"".join(prefix + line + b"\n" for line in lines)
