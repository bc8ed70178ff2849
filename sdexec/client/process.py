"""Run a remote process from asyncio code: :class:`RemoteProcess` and :func:`run`.

Theory of operation
-------------------
A :class:`RemoteProcess` is one streaming ``sdexec.exec`` RPC on a
:class:`~sdexec.client.handle.Handle`, with the protocol state kept by the
sans-IO :class:`~sdexec.client.exec.ExecSession`.  There is no background
task: whoever needs the next response (``start`` waiting for ``started``,
``write`` waiting for credit, ``wait`` waiting for the end) pumps the stream
itself, one response at a time under a lock, so output is handled in order
and nothing runs unowned.  Output goes to an ``on_output(stream, data)``
callback, or is collected in :attr:`RemoteProcess.stdout` / ``stderr``.

``write`` never sends more than the stdin credit allows (RFC 42 "write"): it
splits data to fit and, when the credit is spent, pumps responses until an
``add-credit`` arrives.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from sdexec.base.errors import SdexecError
from sdexec.client.exec import (
    EXEC_TOPIC,
    KILL_TOPIC,
    OUTPUT,
    STREAMING_FLAGS,
    WRITE_TOPIC,
    ExecFailed,
    ExecSession,
    build_command,
    exit_code,
)
from sdexec.client.handle import Handle, Stream
from sdexec.client.rpc import RemoteError

OutputCallback = Callable[[str, bytes], None]
_MAX_WRITE = 256 * 1024


class Completed(NamedTuple):
    """The result of :func:`run`."""

    pid: int
    status: int
    stdout: bytes
    stderr: bytes

    @property
    def returncode(self) -> int:
        """The shell-style exit code (128+N when killed by signal N)."""
        return exit_code(self.status)


class RemoteProcess:
    """One remote process over a connected :class:`Handle`."""

    def __init__(
        self,
        handle: Handle,
        command: Mapping[str, Any],
        *,
        flags: int = STREAMING_FLAGS,
        on_output: OutputCallback | None = None,
    ) -> None:
        self.handle = handle
        self.session = ExecSession(command, flags=flags)
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._on_output = on_output
        self._stream: Stream | None = None
        self._lock = asyncio.Lock()
        self._ended = False

    @property
    def pid(self) -> int | None:
        """The remote pid once started."""
        return self.session.pid

    @property
    def status(self) -> int | None:
        """The wait(2) status once finished."""
        return self.session.status

    @property
    def ended(self) -> bool:
        """True once the exec stream has ended (successfully or not)."""
        return self._ended

    async def start(self) -> int:
        """Send the exec request and wait for ``started``; returns the pid.

        A failure to start raises :class:`~sdexec.client.exec.ExecFailed`
        with the server's errno (ENOENT, EACCES, EEXIST for a label in use...).
        """
        if self._stream is not None:
            raise SdexecError(errno.EINVAL, "the process was already started")
        self._stream = self.handle.stream(EXEC_TOPIC, self.session.request())
        while self.session.pid is None:
            try:
                more = await self._pump()
            except RemoteError as exc:
                raise ExecFailed(exc.errno or errno.EIO, exc.message) from None
            if not more:
                raise SdexecError(errno.EPROTO, "exec stream ended before the process started")
        return self.session.pid

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the process's stdin, waiting for credit as needed.

        Raises SdexecError(EPIPE) if the process ends before all was sent.
        """
        stream = self._started()
        view = memoryview(data)
        while view:
            n = min(self.session.credit.available, len(view), _MAX_WRITE)
            if n == 0:
                if not await self._pump():
                    raise SdexecError(errno.EPIPE, "the process has finished")
                continue
            payload = self.session.write_bytes(stream.matchtag, bytes(view[:n]))
            self.handle.send(WRITE_TOPIC, payload)
            view = view[n:]

    def close_stdin(self) -> None:
        """Send EOF on stdin (once; needs no credit)."""
        stream = self._started()
        if not self.session.stdin_closed and not self._ended:
            self.handle.send(WRITE_TOPIC, self.session.eof_payload(stream.matchtag))

    async def kill(self, signum: int) -> None:
        """Send a signal to the process (``sdexec.kill``)."""
        self._started()
        await self.handle.rpc(KILL_TOPIC, {"pid": self.session.pid, "signum": signum})

    async def wait(self) -> int:
        """Handle responses to the end of the stream; returns the wait status."""
        self._started()
        while await self._pump():
            pass
        return self.session.finish()

    def _started(self) -> Stream:
        if self._stream is None:
            raise SdexecError(errno.EINVAL, "the process has not been started")
        return self._stream

    async def _pump(self) -> bool:
        """Handle the next response; False once the stream has ended."""
        stream = self._started()
        async with self._lock:
            if self._ended:
                return False
            try:
                msg = await stream.next_message()
            except StopAsyncIteration:
                self._ended = True
                return False
            except BaseException:
                self._ended = True
                raise
            event = self.session.feed_message(msg)
            if event is not None and event.kind == OUTPUT and event.data:
                if self._on_output is not None:
                    self._on_output(event.stream, event.data)
                elif event.stream == "stdout":
                    self.stdout += event.data
                elif event.stream == "stderr":
                    self.stderr += event.data
            return True


async def run(
    handle: Handle,
    cmdline: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    opts: Mapping[str, str] | None = None,
    label: str | None = None,
) -> Completed:
    """Run a command to completion, like :func:`subprocess.run` with captured output.

    ``env`` defaults to this process's environment; ``cwd`` to the server's.
    Input the process does not read is dropped, as ``subprocess`` does.
    """
    command = build_command(
        cmdline, env=os.environ if env is None else env, cwd=cwd, opts=opts, label=label
    )
    proc = RemoteProcess(handle, command, flags=STREAMING_FLAGS)
    pid = await proc.start()
    if input:
        try:
            await proc.write(input)
        except SdexecError as exc:
            if exc.errno != errno.EPIPE:
                raise
    if not proc.ended:
        proc.close_stdin()
    status = await proc.wait()
    return Completed(pid, status, bytes(proc.stdout), bytes(proc.stderr))
