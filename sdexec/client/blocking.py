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

With a remote terminal (``--pty``, :mod:`sdexec.proto.pty`) the loop is
given the local :class:`~sdexec.client.terminal.RawTerminal`: keys go out
as they are typed (the remote terminal turns Ctrl-C into SIGINT), SIGWINCH
sends the new window size, SIGCONT makes the terminal raw again, and
SIGTERM or SIGHUP end the loop with :class:`SignalExit` (the remote
process, losing its client, is stopped by the server), so that the caller
restores the terminal on its way out.

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
import time

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.client.exec import (
    EXEC_TOPIC,
    FINISHED,
    KILL_TOPIC,
    OUTPUT,
    STARTED,
    WRITE_TOPIC,
    ExecFailed,
    ExecSession,
    reason_text,
)
from sdexec.client.rpc import MATCHTAG_MAX, RemoteError, lost_error, response_payload
from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import NODEID_ANY, Message, MsgFlag, MsgType, decode_json_payload
from sdexec.transport.connector import open_link
from sdexec.transport.link import Link

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType, TracebackType
    from typing import Any

    from sdexec.client.terminal import RawTerminal
# The C module: ``signal`` imports ``enum``, ~5 ms of every command's start-up.
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal

_READ_SIZE = 256 * 1024
_POLLIN = select.POLLIN | select.POLLHUP | select.POLLERR
INTERRUPT_WINDOW = 1.0  # seconds: a second SIGINT this soon gives up waiting


class BlockingHandle:
    """One blocking connection to an sdexec server (see the module docstring)."""

    def __init__(self, sock: _socket.socket, path: str, link: Link | None = None) -> None:
        self._sock = sock
        self.path = path
        self._link = link  # ssh:// and tcp:// keep a helper alive behind the socket
        self._decoder = FrameDecoder()
        self._inbox: list[Message] = []
        self._next_matchtag = 1
        self._closed = False
        self._send_failed = False
        # The RFC 3 node requests go to unless told otherwise: through a Flux
        # broker, the rank whose sdexec module is to get them.
        self.nodeid = NODEID_ANY
        # RFC 42 request signing (sdexec.cli.signing.Signer): payload -> signed form.
        self.signer: Callable[[str, dict[str, Any] | None], dict[str, Any] | None] | None = None

    @classmethod
    def connect(cls, uri: str | None = None) -> BlockingHandle:
        """Connect to the server named by ``uri`` (default: ``$SDEXEC_URI``).

        Any URI :func:`sdexec.transport.connector.open_link` knows: ``local://``,
        ``ssh://``, ``tcp://``, ``pid:``.  Same errors as
        :meth:`sdexec.client.handle.Handle.connect`.
        """
        link = open_link(uri)
        sock = link.sock
        try:
            try:
                byte = sock.recv(1)
            except OSError:
                byte = b""
            if not byte:
                raise link.early_end() or lost_error()
            if byte[0] != 0:
                raise link.early_end(byte[0]) or SdexecError(
                    byte[0], f"server refused the connection: {os.strerror(byte[0])}"
                )
        except BaseException:
            link.close()
            raise
        return cls(sock, link.uri, link)

    def fileno(self) -> int:
        """The socket's file descriptor, for poll(2)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the connection (the server cancels what this client left running)."""
        if not self._closed:
            self._closed = True
            self._sock.close()
            if self._link is not None:
                self._link.close()

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
        nodeid: int | None = None,
    ) -> int:
        """Send a request that expects responses; returns its matchtag.

        Matchtags count up from 1 and are never reused: a CLI process ends
        long before it could wrap around.
        """
        tag = self._next_matchtag
        self._next_matchtag = tag + 1 if tag < MATCHTAG_MAX else 1
        flags = MsgFlag.STREAMING if streaming else 0
        if self.signer is not None:
            payload = self.signer(topic, payload)
        if nodeid is None:
            nodeid = self.nodeid
        self._write(Message.request(topic, payload, matchtag=tag, nodeid=nodeid, flags=flags))
        return tag

    def send(
        self,
        topic: str,
        payload: dict[str, Any] | bytes | None = None,
        *,
        nodeid: int | None = None,
    ) -> None:
        """Send a NORESPONSE request (matchtag 0), e.g. ``sdexec.write``.

        ``payload`` is a JSON object, or its NUL-terminated encoding as bytes.
        """
        if self.signer is not None:
            if isinstance(payload, bytes):  # the fast path's pre-encoded JSON
                payload = decode_json_payload(payload)
            payload = self.signer(topic, payload)
        if nodeid is None:
            nodeid = self.nodeid
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
            buf = self._decoder.get_buffer()  # received into in place, a frame at a time
            try:
                n = self._sock.recv_into(buf)
            except InterruptedError:
                continue
            except OSError:
                n = 0
            finally:
                buf.release()
            if not n:
                self.close()
                raise lost_error()
            try:
                messages = self._decoder.buffer_updated(n)
            except ProtocolError as exc:
                self.close()
                raise SdexecError(errno.EPROTO, f"bad data from server: {exc}") from None
            self._inbox.extend(m for m in messages if m.type == MsgType.RESPONSE)
        out, self._inbox = self._inbox, []
        return out

    def requeue(self, messages: list[Message]) -> None:
        """Put received messages back, to come first from the next :meth:`receive`."""
        self._inbox[:0] = messages

    @property
    def pending(self) -> bool:
        """Responses are queued: :meth:`receive` returns without reading the socket."""
        return bool(self._inbox)

    def rpc(
        self, topic: str, payload: dict[str, Any] | None = None, *, nodeid: int | None = None
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
        self._old_wakeup = _signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        for signum in signums:
            self._previous[signum] = _signal.signal(signum, _ignore_signal)

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
            _signal.signal(signum, handler)
        self._previous.clear()
        _signal.set_wakeup_fd(self._old_wakeup)
        os.close(self._rfd)
        os.close(self._wfd)


class SignalExit(SdexecError):
    """SIGTERM or SIGHUP ended a terminal session's loop (see the module docstring)."""

    def __init__(self, signum: int) -> None:
        super().__init__(errno.EINTR, f"terminated by signal {signum}")
        self.signum = signum


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler; the work is done by the wakeup fd."""


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``, waiting for room if someone made ``fd`` non-blocking."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            poller.poll()
            continue
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
    terminal: RawTerminal | None = None,
    winsize: Callable[[], tuple[int, int]] | None = None,
) -> int:
    """Run ``session``'s command to the end; returns its wait(2) status.

    Forwards ``stdin_fd`` (None: send EOF as soon as the process starts),
    writes output to ``stdout_fd``/``stderr_fd``, and forwards signals from
    ``signals``.  When an output fd is a broken pipe, that stream's output is
    dropped and the process gets SIGPIPE, as it would in a local pipeline;
    any other write error (ENOSPC, EIO) is raised as SdexecError.  A failed
    ``sdexec.kill`` is reported through ``warn`` (unless the process is gone).

    Raises :class:`~sdexec.client.exec.ExecFailed` if the server cannot
    start the command, SdexecError(ECONNRESET) if the connection is lost,
    and SdexecError(EINTR) if SIGINT arrives twice within
    :data:`INTERRUPT_WINDOW` seconds (the user gave up on the server).

    For a remote terminal, ``winsize`` gives the local window size, sent at
    each SIGWINCH (and SIGCONT); ``terminal`` is made raw again at SIGCONT;
    SIGTERM and SIGHUP raise :class:`SignalExit`.
    """
    loop = _ExecLoop(handle, session, stdin_fd, {"stdout": stdout_fd, "stderr": stderr_fd})
    loop.terminal = terminal
    loop.winsize = winsize
    return loop.run(signals, warn)


class _ExecLoop:
    """The state of one :func:`run_exec`: what is polled, held and pending."""

    def __init__(
        self,
        handle: BlockingHandle,
        session: ExecSession,
        stdin_fd: int | None,
        outputs: dict[str, int],
    ) -> None:
        self.handle = handle
        self.session = session
        self.stdin_fd = stdin_fd
        self.outputs = outputs
        self.poller = select.poll()
        self.polling_stdin = False
        self.held: list[int] = []  # signals that arrived before "started"
        self.kills: set[int] = set()  # matchtags of our kill RPCs
        self.last_sigint = -INTERRUPT_WINDOW
        self.tag = 0
        self.terminal: RawTerminal | None = None
        self.winsize: Callable[[], tuple[int, int]] | None = None

    def run(self, signals: SignalPipe | None, warn: Callable[[str], None] | None) -> int:
        self.tag = self.handle.request(EXEC_TOPIC, self.session.request(), streaming=True)
        sock_fd = self.handle.fileno()
        self.poller.register(sock_fd, _POLLIN)
        sig_fd = -1
        if signals is not None:
            sig_fd = signals.fileno()
            self.poller.register(sig_fd, select.POLLIN)
        while True:
            self._poll_stdin(self._wants_stdin())
            # Signals first: a SIGWINCH that came before the keys read with it goes before them.
            for fd, _ in sorted(self.poller.poll(), key=lambda event: event[0] != sig_fd):
                if fd == sock_fd:
                    for msg in self.handle.receive():
                        status = self._on_response(msg, warn)
                        if status is not None:
                            return status
                elif signals is not None and fd == sig_fd:
                    for signum in signals.drain():
                        self._on_signal(signum)
                elif fd == self.stdin_fd and self.polling_stdin:
                    _forward_stdin(self.handle, self.session, self.tag, fd)

    def _wants_stdin(self) -> bool:
        s = self.session
        return (
            self.stdin_fd is not None
            and s.pid is not None
            and s.status is None
            and not s.stdin_closed
            and s.credit.available > 0
        )

    def _poll_stdin(self, wanted: bool) -> None:
        if wanted != self.polling_stdin and self.stdin_fd is not None:
            if wanted:
                self.poller.register(self.stdin_fd, _POLLIN)
            else:
                self.poller.unregister(self.stdin_fd)
            self.polling_stdin = wanted

    def _on_response(self, msg: Message, warn: Callable[[str], None] | None) -> int | None:
        """Handle one response; the wait status once the exec stream has ended."""
        if msg.matchtag in self.kills:
            self.kills.discard(msg.matchtag)
            if msg.errnum not in (0, errno.ESRCH, errno.ENOENT) and warn is not None:
                warn(f"kill: {msg.error_text() or os.strerror(msg.errnum)}")
            return None
        if msg.matchtag != self.tag:
            return None
        if msg.errnum == errno.ENODATA:
            return self.session.finish()
        if msg.errnum:
            error = ExecFailed if self.session.pid is None else RemoteError
            raise error(msg.errnum, msg.error_text())
        event = self.session.feed_message(msg)
        if event is None:
            return None
        if event.kind == OUTPUT and event.data:
            self._write_output(event.stream, event.data)
        elif event.kind == STARTED:
            if warn is not None:
                for text in self.session.warnings:
                    warn(f"warning: {text}")
            if self.stdin_fd is None:
                self.handle.send(WRITE_TOPIC, self.session.eof_payload(self.tag))
            held, self.held = self.held, []
            for signum in held:
                self._kill(signum)
        elif event.kind == FINISHED:
            self._poll_stdin(False)
            if warn is not None and self.session.reason is not None:
                warn(f"the command ended: {reason_text(self.session.reason)}")
        return None

    def _write_output(self, stream: str, data: bytes) -> None:
        fd = self.outputs.get(stream)
        if fd is None:
            return
        try:
            _write_all(fd, data)
        except BrokenPipeError:
            del self.outputs[stream]
            self._kill(_signal.SIGPIPE)
        except OSError as exc:
            num = exc.errno or errno.EIO
            raise SdexecError(num, f"cannot write {stream}: {os.strerror(num)}") from None

    def _on_signal(self, signum: int) -> None:
        if self.winsize is not None:
            if signum == _signal.SIGCONT and self.terminal is not None:
                self.terminal.enter()
            if signum in (_signal.SIGWINCH, _signal.SIGCONT):
                self._send_winsize()
                return
            if signum in (_signal.SIGTERM, _signal.SIGHUP):
                raise SignalExit(signum)
        if signum == _signal.SIGINT:
            now = time.monotonic()
            if now - self.last_sigint < INTERRUPT_WINDOW:
                raise SdexecError(errno.EINTR, "interrupted")
            self.last_sigint = now
        self._kill(signum)

    def _send_winsize(self) -> None:
        """The window size as a write to ``pty.winsize`` (no credit; see sdexec.proto.pty)."""
        if self.winsize is None or self.session.status is not None:
            return
        from sdexec.proto import pty  # --pty only

        text = pty.format_winsize(*self.winsize()).encode()
        self.handle.send(WRITE_TOPIC, self.session.side_payload(self.tag, pty.WINSIZE_STREAM, text))

    def _kill(self, signum: int) -> None:
        if self.session.status is not None:
            return  # it has finished: nothing to signal
        if self.session.pid is None:
            self.held.append(signum)
            return
        payload = {"pid": self.session.pid, "signum": signum}
        self.kills.add(self.handle.request(KILL_TOPIC, payload))


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
        handle.send(WRITE_TOPIC, session.write_bytes(tag, data))
    else:
        handle.send(WRITE_TOPIC, session.eof_payload(tag))
