"""A small blocking client for short-lived commands: one poll(2) loop, no asyncio.

Theory of operation
-------------------
The ``sdexec`` CLI runs once per command, so its start-up time is part of
every remote command's latency.  Importing :mod:`asyncio` alone costs about
50 ms on the project's machines (more than a whole ``systemd-run --wait``),
and :mod:`socket` another ~10 ms of enum set-up; so the CLI speaks the same
protocol through this module instead, built on ``_socket``, ``select.poll``
and the shared sans-IO pieces (:mod:`sdexec.proto`,
:mod:`sdexec.client.rpc`, :class:`sdexec.client.exec.ExecSession`).
Library code that already runs an event loop uses
:class:`sdexec.client.handle.Handle` instead; both speak the same wire
protocol (``local://`` framing, handshake byte, matchtags from 1).

:func:`run_exec` is the CLI's remote process: one poll loop multiplexes

- the server socket (exec responses, kill responses);
- standard input, polled only while the process runs, stdin is open and
  credit is available, so a read never blocks and never outruns the
  server's buffer (RFC 42 "write");
- a self-pipe that :func:`signal.set_wakeup_fd` writes signal numbers to,
  so SIGINT/SIGTERM are forwarded as ``sdexec.kill`` RPCs (held until
  ``started`` if they arrive earlier).

poll(2) works on every kind of stdin the CLI meets: pipes, ttys, sockets,
and regular files and ``/dev/null`` (always readable), which epoll-based
asyncio would refuse.  Stdin is never switched to non-blocking mode, since
that flag is shared with whoever else holds the file (the user's terminal).
Output is written with one ``write`` per response, byte-exact, so stdout
and stderr interleave as the process produced them and nothing waits in a
buffer.
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import signal
import time

from sdexec import uri as _uri
from sdexec.client.exec import (
    EXEC_TOPIC,
    FINISHED,
    KILL_TOPIC,
    OUTPUT,
    STARTED,
    WRITE_TOPIC,
    ExecFailed,
    ExecSession,
)
from sdexec.client.rpc import MATCHTAG_MAX, RemoteError, lost_error, response_payload
from sdexec.errors import ProtocolError, SdexecError
from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import NODEID_ANY, Message, MsgFlag, MsgType

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType, TracebackType
    from typing import Any

_RECV_SIZE = 256 * 1024
_READ_SIZE = 64 * 1024
_POLLIN = select.POLLIN | select.POLLHUP | select.POLLERR
INTERRUPT_WINDOW = 1.0  # seconds: a second SIGINT this soon gives up waiting


class BlockingHandle:
    """One blocking connection to an sdexec server (see the module docstring)."""

    def __init__(self, sock: _socket.socket, path: str) -> None:
        self._sock = sock
        self.path = path
        self._decoder = FrameDecoder()
        self._inbox: list[Message] = []
        self._next_matchtag = 1
        self._closed = False
        self._send_failed = False

    @classmethod
    def connect(cls, uri: str | None = None) -> BlockingHandle:
        """Connect to the server named by ``uri`` (default: ``$SDEXEC_URI``).

        Same errors as :meth:`sdexec.client.handle.Handle.connect`.
        """
        path = _uri.socket_path(uri)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            try:
                sock.connect(path)
            except FileNotFoundError:
                raise SdexecError(errno.ENOENT, f"server socket {path} was not found") from None
            except OSError as exc:
                num = exc.errno or errno.ECONNREFUSED
                raise SdexecError(num, f"cannot connect to {path}: {os.strerror(num)}") from None
            try:
                byte = sock.recv(1)
            except OSError:
                byte = b""
            if not byte:
                raise lost_error()
            if byte[0] != 0:
                raise SdexecError(byte[0], f"server refused the connection: {os.strerror(byte[0])}")
        except BaseException:
            sock.close()
            raise
        return cls(sock, path)

    def fileno(self) -> int:
        """The socket's file descriptor, for poll(2)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the connection (the server cancels what this client left running)."""
        if not self._closed:
            self._closed = True
            self._sock.close()

    def __enter__(self) -> BlockingHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- sending -----------------------------------------------------------------

    def request(
        self,
        topic: str,
        payload: dict[str, Any] | None = None,
        *,
        streaming: bool = False,
        nodeid: int = NODEID_ANY,
    ) -> int:
        """Send a request that expects responses; returns its matchtag.

        Matchtags count up from 1 and are never reused: a CLI process ends
        long before it could wrap around.
        """
        tag = self._next_matchtag
        self._next_matchtag = tag + 1 if tag < MATCHTAG_MAX else 1
        flags = MsgFlag.STREAMING if streaming else 0
        self._write(Message.request(topic, payload, matchtag=tag, nodeid=nodeid, flags=flags))
        return tag

    def send(
        self, topic: str, payload: dict[str, Any] | None = None, *, nodeid: int = NODEID_ANY
    ) -> None:
        """Send a NORESPONSE request (matchtag 0), e.g. ``sdexec.write``."""
        self._write(Message.request(topic, payload, nodeid=nodeid, flags=MsgFlag.NORESPONSE))

    def _write(self, msg: Message) -> None:
        if self._closed:
            raise lost_error()
        if self._send_failed:
            return
        try:
            self._sock.sendall(encode_frame(msg))
        except OSError:
            # The server hung up; responses it sent before may still be
            # waiting to be read, so report the loss from receive(), in order.
            self._send_failed = True

    # --- receiving ----------------------------------------------------------------

    def receive(self) -> list[Message]:
        """The responses that have arrived, blocking until at least one has.

        Events and other message types are dropped.  A closed connection
        raises SdexecError(ECONNRESET).
        """
        while not self._inbox:
            try:
                data = self._sock.recv(_RECV_SIZE)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                self.close()
                raise lost_error()
            try:
                messages = self._decoder.feed(data)
            except ProtocolError as exc:
                self.close()
                raise SdexecError(errno.EPROTO, f"bad data from server: {exc}") from None
            self._inbox.extend(m for m in messages if m.type == MsgType.RESPONSE)
        out, self._inbox = self._inbox, []
        return out

    def rpc(
        self, topic: str, payload: dict[str, Any] | None = None, *, nodeid: int = NODEID_ANY
    ) -> dict[str, Any]:
        """Send a request and wait for its one response (see ``Handle.rpc``).

        Responses to other matchtags that arrive meanwhile stay queued for
        :meth:`receive`.
        """
        tag = self.request(topic, payload, nodeid=nodeid)
        others: list[Message] = []
        try:
            while True:
                for msg in self.receive():
                    if msg.matchtag == tag:
                        return response_payload(msg)
                    others.append(msg)
        finally:
            self._inbox[:0] = others


class SignalPipe:
    """Catch some signals and make them readable on a file descriptor.

    The C-level handler writes each signal number as one byte to a
    non-blocking pipe (:func:`signal.set_wakeup_fd`), so a poll loop wakes
    up and learns which signals arrived, in order.  :meth:`restore` puts the
    previous handlers back.
    """

    def __init__(self, signums: Sequence[int]) -> None:
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous: dict[int, Any] = {}
        self._old_wakeup = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        for signum in signums:
            self._previous[signum] = signal.signal(signum, _ignore_signal)

    def fileno(self) -> int:
        return self._rfd

    def drain(self) -> list[int]:
        """The signal numbers received since the last call."""
        try:
            return list(os.read(self._rfd, 512))
        except BlockingIOError:
            return []

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self._rfd)
        os.close(self._wfd)


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler; the work is done by the wakeup fd."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def run_exec(
    handle: BlockingHandle,
    session: ExecSession,
    *,
    stdin_fd: int | None = 0,
    stdout_fd: int = 1,
    stderr_fd: int = 2,
    signals: SignalPipe | None = None,
    warn: Callable[[str], None] | None = None,
) -> int:
    """Run ``session``'s command to the end; returns its wait(2) status.

    Forwards ``stdin_fd`` (None: send EOF as soon as the process starts),
    writes output to ``stdout_fd``/``stderr_fd``, and forwards signals from
    ``signals``.  When an output fd is a broken pipe, that stream's output is
    dropped and the process gets SIGPIPE, as it would in a local pipeline.

    Raises :class:`~sdexec.client.exec.ExecFailed` if the server cannot
    start the command, SdexecError(ECONNRESET) if the connection is lost,
    and SdexecError(EINTR) if SIGINT arrives twice within
    :data:`INTERRUPT_WINDOW` seconds (the user gave up on the server).
    """
    tag = handle.request(EXEC_TOPIC, session.request(), streaming=True)
    sock_fd = handle.fileno()
    poller = select.poll()
    poller.register(sock_fd, _POLLIN)
    if signals is not None:
        poller.register(signals.fileno(), select.POLLIN)
    outputs = {"stdout": stdout_fd, "stderr": stderr_fd}
    held: list[int] = []  # signals that arrived before "started"
    kills: set[int] = set()  # matchtags of our kill RPCs
    last_sigint = -INTERRUPT_WINDOW
    polling_stdin = False

    def kill(signum: int) -> None:
        if session.status is not None:
            return  # it has finished: nothing to signal
        if session.pid is None:
            held.append(signum)
            return
        kills.add(handle.request(KILL_TOPIC, {"pid": session.pid, "signum": signum}))

    while True:
        want_stdin = (
            stdin_fd is not None
            and session.pid is not None
            and session.status is None
            and not session.stdin_closed
            and session.credit.available > 0
        )
        if want_stdin != polling_stdin:
            assert stdin_fd is not None
            if want_stdin:
                poller.register(stdin_fd, _POLLIN)
            else:
                poller.unregister(stdin_fd)
            polling_stdin = want_stdin
        for fd, _ in poller.poll():
            if fd == sock_fd:
                for msg in handle.receive():
                    if msg.matchtag in kills:
                        kills.discard(msg.matchtag)
                        if msg.errnum not in (0, errno.ESRCH, errno.ENOENT) and warn:
                            warn(f"kill: {msg.error_text() or os.strerror(msg.errnum)}")
                        continue
                    if msg.matchtag != tag:
                        continue
                    if msg.errnum == errno.ENODATA:
                        return session.finish()
                    if msg.errnum:
                        text = msg.error_text()
                        if session.pid is None:
                            raise ExecFailed(msg.errnum, text)
                        raise RemoteError(msg.errnum, text)
                    event = session.feed(response_payload(msg))
                    if event is None:
                        continue
                    if event.kind == OUTPUT and event.data:
                        out_fd = outputs.get(event.stream)
                        if out_fd is None:
                            continue
                        try:
                            _write_all(out_fd, event.data)
                        except BrokenPipeError:
                            del outputs[event.stream]
                            kill(signal.SIGPIPE)
                    elif event.kind == STARTED:
                        if stdin_fd is None:
                            handle.send(WRITE_TOPIC, session.eof_payload(tag))
                        for signum in held:
                            kill(signum)
                        held.clear()
                    elif event.kind == FINISHED and polling_stdin:
                        assert stdin_fd is not None
                        poller.unregister(stdin_fd)
                        polling_stdin = False
            elif signals is not None and fd == signals.fileno():
                for signum in signals.drain():
                    if signum == signal.SIGINT:
                        now = time.monotonic()
                        if now - last_sigint < INTERRUPT_WINDOW:
                            raise SdexecError(errno.EINTR, "interrupted")
                        last_sigint = now
                    kill(signum)
            elif fd == stdin_fd and polling_stdin:
                _forward_stdin(handle, session, tag, fd)


def _forward_stdin(handle: BlockingHandle, session: ExecSession, tag: int, fd: int) -> None:
    """One read from stdin, sent as one write (or EOF)."""
    size = min(session.credit.available, _READ_SIZE)
    try:
        data = os.read(fd, size)
    except BlockingIOError:
        return  # someone else made it non-blocking; poll again
    except OSError:
        data = b""  # EIO from a hung-up tty and the like: treat as EOF
    if data:
        handle.send(WRITE_TOPIC, session.write_payload(tag, data))
    else:
        handle.send(WRITE_TOPIC, session.eof_payload(tag))
