"""RFC 42 ``exec``, client side, sans-IO: the request, the responses, stdin credit.

Theory of operation
-------------------
A remote process is one streaming ``sdexec.exec`` RPC (RFC 42 "exec").  The
client sends ``{"cmd": COMMAND, "flags": F, "local_flags": 0}`` and the
server answers with a stream of responses told apart by ``type``:

``started {pid}``, ``output {io}``, ``add-credit {channels}``, ``stopped``,
``finished {status}``, and finally the ENODATA error that ends every RFC 6
stream.  A failure to start the command (ENOENT from exec, a duplicate
label) is an error response instead, before any ``started``.

Standard input goes the other way as ``sdexec.write`` requests (NORESPONSE,
matchtag 0) that name the exec RPC by its matchtag.  RFC 42 "write" defines
flow control by credit: the client tracks the free space L of the server's
stdin buffer; each ``add-credit`` adds to L, each write subtracts its
unencoded length, and a write never sends more than L.  Before the first
``add-credit`` the client may *borrow* up to the default buffer size (4096
bytes), so short inputs go out without waiting a round trip; the server's
first ``add-credit`` carries its whole buffer size and so repays the loan.

:class:`ExecSession` holds that state and turns responses into
:class:`ExecEvent` values; it does no I/O, so both the asyncio helper
(:mod:`sdexec.client.process`) and the CLI's small poll(2) loop
(:mod:`sdexec.client.blocking`) drive the same code.  Data that is valid
UTF-8 (and has no NUL, which C JSON parsers reject) travels as a JSON string;
anything else as base64, as RFC 24 io objects allow.

This module is on the CLI's start-up path: it imports no asyncio or socket.
"""

from __future__ import annotations

import errno

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.client.rpc import RemoteError, response_payload
from sdexec.proto.jsonio import parse_output_data, write_payload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from sdexec.proto.message import Message

SERVICE = "sdexec"
EXEC_TOPIC = "sdexec.exec"
WRITE_TOPIC = "sdexec.write"
KILL_TOPIC = "sdexec.kill"
WAIT_TOPIC = "sdexec.wait"
LIST_TOPIC = "sdexec.list"

# RFC 42 exec request flags.
FLAG_STDOUT = 1
FLAG_STDERR = 2
FLAG_CHANNEL = 4
FLAG_WRITE_CREDIT = 8
FLAG_WAITABLE = 16
STREAMING_FLAGS = FLAG_STDOUT | FLAG_STDERR | FLAG_WRITE_CREDIT

DEFAULT_STDIN_BUFSIZE = 4096
STDIN = "stdin"

# ExecEvent kinds (the RFC 42 response ``type`` values).
STARTED = "started"
OUTPUT = "output"
ADD_CREDIT = "add-credit"
STOPPED = "stopped"
FINISHED = "finished"


class ExecFailed(RemoteError):
    """The server could not start the command: the exec RPC's error response.

    Its errno is the server's (ENOENT: command not found, EACCES/EPERM: not
    executable, EEXIST: label in use, ...) and its message the server's text.
    """


def build_command(
    cmdline: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    opts: Mapping[str, str] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """An RFC 42 command object.  ``cwd`` None leaves the server's choice."""
    if not cmdline:
        raise SdexecError(errno.EINVAL, "no command given")
    cmd: dict[str, Any] = {}
    if cwd is not None:
        cmd["cwd"] = cwd
    cmd["cmdline"] = list(cmdline)
    cmd["env"] = dict(env)
    cmd["opts"] = dict(opts) if opts else {}
    cmd["channels"] = []
    if label is not None:
        from sdexec.proto.labels import label_problem  # --label only

        problem = label_problem(label)
        if problem is not None:
            raise SdexecError(errno.EINVAL, f"--label: {problem}")
        cmd["label"] = label
    return cmd


def exec_payload(command: Mapping[str, Any], flags: int) -> dict[str, Any]:
    """The ``sdexec.exec`` request payload for a command object."""
    return {"cmd": command, "flags": flags, "local_flags": 0}


def exit_code(status: int) -> int:
    """A shell-style exit code for a wait(2) status.

    Exited: the exit code.  Killed by signal N (core dumped or not): 128+N.
    """
    signum = status & 0x7F
    if signum == 0:
        return (status >> 8) & 0xFF
    if signum == 0x7F:  # stopped: not a final status, but be total
        return 128 + ((status >> 8) & 0xFF)
    return 128 + signum


# --- RFC 24 io objects ----------------------------------------------------------


def encode_io(
    stream: str, data: bytes = b"", *, eof: bool = False, rank: str = "0"
) -> dict[str, Any]:
    """An io object for ``data`` (UTF-8 text as is, anything else base64)."""
    io: dict[str, Any] = {"stream": stream, "rank": rank}
    if data:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and "\0" not in text:
            io["data"] = text
        else:
            from sdexec.proto import b64

            io["data"] = b64.encode(data).decode("ascii")
            io["encoding"] = "base64"
    if eof:
        io["eof"] = True
    return io


# --- credit -----------------------------------------------------------------------


class StdinCredit:
    """Free space in the server's stdin buffer, per RFC 42 "write".

    ``balance`` is RFC 42's L: credits received minus bytes sent.  Until the
    first credit arrives it may go down to ``-borrow``; after that it stays
    at zero or above, because the first credit is the server's whole buffer
    and so already covers what was borrowed.
    """

    __slots__ = ("_borrow", "_credited", "balance", "sent")

    def __init__(self, borrow: int = DEFAULT_STDIN_BUFSIZE) -> None:
        self._borrow = borrow
        self._credited = False
        self.balance = 0
        self.sent = 0

    @property
    def available(self) -> int:
        """How many bytes may be written now."""
        floor = 0 if self._credited else -self._borrow
        return max(0, self.balance - floor)

    def add(self, n: int) -> None:
        """Record an ``add-credit`` of ``n`` bytes."""
        self._credited = True
        self.balance += n

    def charge(self, n: int) -> None:
        """Record a write of ``n`` bytes; more than :attr:`available` is a bug."""
        if n > self.available:
            raise SdexecError(errno.ENOSPC, "write exceeds the stdin credit")
        self.balance -= n
        self.sent += n


def borrowable_credit(opts: Mapping[str, str]) -> int:
    """What may be written before the first ``add-credit`` (RFC 42 "write").

    4096 bytes, or less when the command asks for a smaller buffer with the
    ``stdin_BUFSIZE`` option (as flux-core spells it; k/m/g suffixes).
    """
    raw = opts.get("stdin_BUFSIZE")
    if raw is None:
        return DEFAULT_STDIN_BUFSIZE
    text = str(raw).strip().lower()
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    if scale != 1:
        text = text[:-1]
    try:
        size = int(text) * scale
    except ValueError:
        return DEFAULT_STDIN_BUFSIZE  # the server rejects it; nothing is written
    return max(0, min(DEFAULT_STDIN_BUFSIZE, size))


# --- the session -------------------------------------------------------------------


EXIT_SDEXEC_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
#: How a server's text starts when the working directory, not the command, is wrong.
WORKING_DIRECTORY = "working directory "


def exec_error_exit_code(errnum: int | None, text: str = "") -> int:
    """The shell's exit code for a command the server could not start
    (docs/reference/exit-status.md).

    127 not found, 126 found but not executable (EACCES, EPERM, ENOEXEC,
    ENOTDIR, as a shell says), 125 anything else, a bad working directory
    included (as env -C does).
    """
    if text.startswith(WORKING_DIRECTORY):
        return EXIT_SDEXEC_FAILED
    if errnum == errno.ENOENT:
        return EXIT_NOT_FOUND
    if errnum in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.ENOTDIR):
        return EXIT_CANNOT_EXECUTE
    return EXIT_SDEXEC_FAILED


def started_warnings(resp: Mapping[str, Any]) -> list[str]:
    """What the server warns about in a ``started`` response (sdexec extension
    ``warnings``: resource properties it cannot enforce); other servers send none."""
    raw = resp.get("warnings")
    if not isinstance(raw, list):
        return []
    return [w for w in raw if isinstance(w, str)]


#: What a ``reason`` (systemd's Result) means, for a person.
REASON_TEXT = {
    "oom-kill": "killed by the kernel's OOM killer: the unit reached its memory limit",
    "timeout": "stopped by systemd after a timeout",
}


def finish_reason(resp: Mapping[str, Any]) -> str | None:
    """The ``reason`` of a ``finished`` or ``wait`` response (an sdexec extension), if any."""
    reason = resp.get("reason")
    return reason if isinstance(reason, str) and reason else None


def reason_text(reason: str) -> str:
    """``reason`` named for a person: ``oom-kill (killed by the kernel's OOM killer: ...)``."""
    meaning = REASON_TEXT.get(reason)
    return f"{reason} ({meaning})" if meaning else reason


class ExecEvent:
    """One decoded exec response.

    ``kind`` is the response type.  ``pid`` is set for ``started``;
    ``stream``/``data``/``eof`` for ``output``; ``credit`` (stdin bytes) for
    ``add-credit``; ``status`` (a wait(2) status) for ``finished``.
    """

    __slots__ = ("credit", "data", "eof", "kind", "pid", "status", "stream")

    def __init__(
        self,
        kind: str,
        *,
        pid: int | None = None,
        stream: str = "",
        data: bytes = b"",
        eof: bool = False,
        credit: int = 0,
        status: int | None = None,
    ) -> None:
        self.kind = kind
        self.pid = pid
        self.stream = stream
        self.data = data
        self.eof = eof
        self.credit = credit
        self.status = status

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__ if k != "kind")
        return f"ExecEvent({self.kind!r}, {fields})"


def _int_field(resp: Mapping[str, Any], key: str) -> int:
    value = resp.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"exec {resp.get('type')} response has no integer {key!r}")
    return value


class ExecSession:
    """The client's view of one remote process (no I/O).

    Build it, send :meth:`request` as a streaming ``sdexec.exec`` RPC, pass
    each response payload to :meth:`feed`, and call :meth:`finish` on ENODATA.
    Stdin goes out as :meth:`write_payload` / :meth:`eof_payload` payloads,
    no larger than :attr:`StdinCredit.available`.
    """

    def __init__(
        self,
        command: Mapping[str, Any],
        *,
        flags: int = STREAMING_FLAGS,
        stdin_borrow: int | None = None,
    ) -> None:
        self.command = command
        self.flags = flags
        if stdin_borrow is None:
            stdin_borrow = borrowable_credit(command.get("opts") or {})
        self.credit = StdinCredit(stdin_borrow)
        self.pid: int | None = None
        self.status: int | None = None
        self.stopped = False
        self.stdin_closed = False
        self.eof_streams: set[str] = set()
        self.warnings: list[str] = []  # from the server's started response
        self.reason: str | None = None  # why it ended, when its status does not tell

    @property
    def name(self) -> str:
        """The command name, for messages."""
        cmdline = self.command.get("cmdline") or ["?"]
        return str(cmdline[0])

    def request(self) -> dict[str, Any]:
        """The ``sdexec.exec`` request payload."""
        return exec_payload(self.command, self.flags)

    def feed(self, resp: Mapping[str, Any]) -> ExecEvent | None:
        """Account for one response; None for a type this client ignores."""
        kind = resp.get("type")
        if kind == OUTPUT:
            io = resp.get("io")
            if not isinstance(io, dict) or not isinstance(io.get("stream"), str):
                raise ProtocolError("exec output response has no valid io object")
            eof = io.get("eof", False) is True
            if eof:
                self.eof_streams.add(io["stream"])
            from sdexec.proto.iodata import decode_io_data  # output another server laid out

            return ExecEvent(OUTPUT, stream=io["stream"], data=decode_io_data(io), eof=eof)
        if kind == STARTED:
            self.pid = _int_field(resp, "pid")
            self.stopped = False
            self.warnings = started_warnings(resp)
            return ExecEvent(STARTED, pid=self.pid)
        if kind == ADD_CREDIT:
            channels = resp.get("channels")
            if not isinstance(channels, dict):
                raise ProtocolError("exec add-credit response has no channels object")
            n = channels.get(STDIN, 0)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ProtocolError("exec add-credit response has a bad stdin credit")
            self.credit.add(n)
            return ExecEvent(ADD_CREDIT, credit=n)
        if kind == STOPPED:
            self.stopped = True
            return ExecEvent(STOPPED)
        if kind == FINISHED:
            self.status = _int_field(resp, "status")
            self.reason = finish_reason(resp)
            return ExecEvent(FINISHED, status=self.status)
        return None

    def feed_message(self, msg: Message) -> ExecEvent | None:
        """:meth:`feed` for a whole success response: output data stays bytes.

        An ``output`` response in the layout sdexec servers write is decoded
        without building a str of its data (output forwarding's hot path);
        anything else goes through :func:`~sdexec.client.rpc.response_payload`.
        """
        raw = msg.payload
        if raw is not None and raw.startswith(b'{"type":"output"'):
            fast = parse_output_data(raw)
            if fast is not None:
                _pid, stream, data, eof = fast
                if eof:
                    self.eof_streams.add(stream)
                return ExecEvent(OUTPUT, stream=stream, data=data, eof=eof)
        return self.feed(response_payload(msg))

    def finish(self) -> int:
        """The wait status, once the stream has ended with ENODATA.

        RFC 42 requires ``finished`` before ENODATA; its absence is EPROTO.
        """
        if self.status is None:
            raise ProtocolError("exec stream ended before the process finished")
        return self.status

    def write_payload(self, matchtag: int, data: bytes) -> dict[str, Any]:
        """An ``sdexec.write`` payload for ``data``, charged to the credit."""
        if self.stdin_closed:
            raise SdexecError(errno.EPIPE, "stdin is already closed")
        self.credit.charge(len(data))
        return {"matchtag": matchtag, "io": encode_io(STDIN, data)}

    def write_bytes(self, matchtag: int, data: bytes) -> bytes:
        """:meth:`write_payload` already encoded (NUL-terminated JSON): stdin's hot path."""
        if self.stdin_closed:
            raise SdexecError(errno.EPIPE, "stdin is already closed")
        self.credit.charge(len(data))
        return write_payload(matchtag, STDIN, "0", data, False)

    def side_payload(self, matchtag: int, stream: str, data: bytes) -> dict[str, Any]:
        """An ``sdexec.write`` payload to a stream that takes no credit (``pty.winsize``)."""
        return {"matchtag": matchtag, "io": encode_io(stream, data)}

    def eof_payload(self, matchtag: int) -> dict[str, Any]:
        """The ``sdexec.write`` payload that closes stdin (needs no credit)."""
        self.stdin_closed = True
        return {"matchtag": matchtag, "io": encode_io(STDIN, eof=True)}
