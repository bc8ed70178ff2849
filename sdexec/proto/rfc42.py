"""RFC 42 subprocess server protocol: request schemas and response builders.

Theory of operation
-------------------
Each request payload is validated here, once, into a typed object; a missing
or mistyped REQUIRED field is EPROTO, as RFC 42 "Request Authentication"
asks for the signature JSON object and as flux-core does for plain payloads.
Values that are well-typed but unacceptable (an empty label, a bad signal
number, an option of ``cmd.opts`` with a bad value) are EINVAL.  An exec's
options (RFC 42 leaves ``cmd.opts`` to the implementation) are parsed with
it into :class:`ExecOptions`, so the server reads typed fields and never a
string.  Response payloads are built by small functions so the wire shape
lives in one place.

The seed RFC 42 spells the message channel key ``msgchans``; flux-core sends
``msgchan``.  Both are accepted.
"""

from __future__ import annotations

import enum
import errno
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.proto import b64, pty
from sdexec.proto.iodata import decode_io_data
from sdexec.proto.labels import label_problem


class ExecFlag(enum.IntFlag):
    STDOUT = 1
    STDERR = 2
    CHANNEL = 4
    WRITE_CREDIT = 8
    WAITABLE = 16


class LocalFlag(enum.IntFlag):
    STDIO_FALLTHROUGH = 1
    NO_SETPGRP = 2
    FORK_EXEC = 4


DEFAULT_STDIN_BUFSIZE = 4096
#: How the error text of an exec whose command could not be started begins
#: (as from Flux's own servers, whose tools and users match on it).
LAUNCH_ERROR = "error launching process: "
#: Command option (``yes``/``no``): a waitable background process stays
#: waitable only while the connection that started it lasts; after that its
#: status is owed to nobody and it is forgotten as it ends.
WAIT_SCOPE_OPTION = "SDEXEC_WAITABLE_WHILE_CONNECTED"
#: The most of an output stream held back waiting for a newline (``<stream>_BUFSIZE``),
#: as in flux-core's subprocesses.
DEFAULT_OUTPUT_BUFSIZE = 4 << 20


@dataclass(slots=True)
class MsgChan:
    name: str
    uri: str


@dataclass(slots=True)
class Command:
    """The RFC 42 command object."""

    cmdline: list[str]
    env: dict[str, str]
    opts: dict[str, str]
    channels: list[str]
    cwd: str | None = None
    label: str | None = None
    msgchans: list[MsgChan] = field(default_factory=list)


# --- command options (cmd.opts) ------------------------------------------------

# The options of ``cmd.opts`` that this server reads, parsed once into
# :class:`ExecOptions` with the request (EINVAL, naming the option, for a bad
# value).  Two families are read elsewhere: ``SDEXEC_PROP_<Name>``, unit
# properties (:mod:`sdexec.systemd.properties`), and ``<NAME>_BUFSIZE`` of a
# channel (:mod:`sdexec.server.channels`).

#: The client's idempotency key of an exec: 1 to KEY_MAX printable bytes, no spaces.
KEY_OPTION = "SDEXEC_IDEMPOTENCY_KEY"
KEY_MAX = 128
#: The unit's name (``.service`` is added when missing), instead of one made up.
NAME_OPTION = "SDEXEC_NAME"
#: A rank's share of a job's resources, turned into unit properties by a mapper.
R_LOCAL_OPTION = "SDEXEC_R_LOCAL"
#: Yes/no: a property the systemd manager cannot enforce is an error (EOPNOTSUPP).
STRICT_OPTION = "SDEXEC_STRICT_PROPERTIES"
#: The CPUs (an idset) a unit must be confined to; honoured only by a server
#: that allows test options (Flux's ``[systemd] sdexec-debug``).
TEST_CPUS_OPTION = "SDEXEC_TEST_EXPECTED_CPUS"
STOP_TIMER_SEC_OPTION = "SDEXEC_STOP_TIMER_SEC"
STOP_TIMER_SIGNAL_OPTION = "SDEXEC_STOP_TIMER_SIGNAL"
OUTPUT_STREAMS = ("stdout", "stderr")


@dataclass(frozen=True, slots=True)
class ExecOptions:
    """What an exec's ``cmd.opts`` ask of this server, typed (defaults: none given)."""

    #: ``stdin_BUFSIZE``: the stdin credit the client may borrow.
    stdin_bufsize: int = DEFAULT_STDIN_BUFSIZE
    #: ``<stream>_BUFSIZE``: the most of a line held back (absent or 0: the default).
    output_bufsize: Mapping[str, int] = field(
        default_factory=lambda: dict.fromkeys(OUTPUT_STREAMS, DEFAULT_OUTPUT_BUFSIZE)
    )
    #: ``<stream>_LINE_BUFFER`` of the streams that say (``true``/``false``);
    #: any other stream has the server's default.
    line_buffer: Mapping[str, bool] = field(default_factory=dict)
    #: (seconds or None: off, signal) of ``SDEXEC_STOP_TIMER_SEC``/``_SIGNAL``.
    stop_timer: tuple[int | None, int] = (None, 9)
    #: :data:`WAIT_SCOPE_OPTION`.
    wait_scoped: bool = False
    #: :data:`KEY_OPTION`.
    key: str | None = None
    #: The window size (cols, rows) of the terminal the exec asks for
    #: (``SDEXEC_PTY``, :mod:`sdexec.proto.pty`); None: no terminal.
    winsize: tuple[int, int] | None = None
    #: :data:`NAME_OPTION`, with its ``.service``.
    unit_name: str | None = None
    #: :data:`R_LOCAL_OPTION`.
    r_local: str | None = None
    #: :data:`STRICT_OPTION`; None: the server's default.
    strict_properties: bool | None = None
    #: :data:`TEST_CPUS_OPTION`, as given (decoded only by a server that honours it).
    test_cpus: str | None = None

    def line_bufsize(self, stream: str, default: bool) -> int | None:
        """The most of a line of ``stream`` held back; None if it is not line buffered."""
        if not self.line_buffer.get(stream, default):
            return None
        return self.output_bufsize[stream]


def bool_option(opts: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A yes/no command option (``1``/``yes``/``true``/``on`` or
    ``0``/``no``/``false``/``off``); ``default`` when absent, EINVAL otherwise."""
    raw = opts.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise SdexecError(errno.EINVAL, f"invalid {name}: {raw!r} (yes or no)")


def parse_options(
    cmd: Command, flags: ExecFlag, local_flags: LocalFlag, streaming: bool
) -> ExecOptions:
    """Every option of ``cmd.opts`` this server reads, checked (EINVAL) and typed.

    ``streaming``: the exec has a client to stream to (RFC 6 STREAMING): its
    terminal needs the stdout flag.
    """
    opts = cmd.opts
    strict = None if STRICT_OPTION not in opts else bool_option(opts, STRICT_OPTION)
    line_buffer = {
        stream: _true_false(opts, f"{stream}_LINE_BUFFER")
        for stream in OUTPUT_STREAMS
        if f"{stream}_LINE_BUFFER" in opts
    }
    return ExecOptions(
        stdin_bufsize=_bufsize(opts, "stdin", DEFAULT_STDIN_BUFSIZE, zero_is_default=False),
        output_bufsize={
            stream: _bufsize(opts, stream, DEFAULT_OUTPUT_BUFSIZE, zero_is_default=True)
            for stream in OUTPUT_STREAMS
        },
        line_buffer=line_buffer,
        stop_timer=_stop_timer(opts),
        wait_scoped=bool_option(opts, WAIT_SCOPE_OPTION),
        key=_idempotency_key(opts),
        winsize=_terminal(cmd, flags, local_flags, streaming),
        unit_name=_unit_name(opts),
        r_local=opts.get(R_LOCAL_OPTION),
        strict_properties=strict,
        test_cpus=opts.get(TEST_CPUS_OPTION),
    )


def _bufsize(opts: Mapping[str, str], stream: str, default: int, *, zero_is_default: bool) -> int:
    """``<stream>_BUFSIZE`` in bytes (``k``, ``m``, ``g`` suffixes); ``default`` when absent.

    An output stream's 0 also means the default; stdin's must be at least 1.
    """
    raw = opts.get(f"{stream}_BUFSIZE")
    if raw is None:
        return default
    try:
        size = _parse_size(raw)
    except ValueError:
        size = -1
    if size < 0 or (size == 0 and not zero_is_default):
        raise SdexecError(errno.EINVAL, f"invalid {stream}_BUFSIZE: {raw}")
    return size or default


def _true_false(opts: Mapping[str, str], name: str) -> bool:
    """``<stream>_LINE_BUFFER``: one output response per line (``true``/``false``)."""
    raw = opts[name]
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise SdexecError(errno.EINVAL, f"invalid {name}: {raw} (expected true or false)")
    return value == "true"


def _stop_timer(opts: Mapping[str, str]) -> tuple[int | None, int]:
    """(seconds, signal) of ``SDEXEC_STOP_TIMER_SEC``/``_SIGNAL``; seconds None: off.

    Once a unit is stopping, the signal goes to its main process after
    that many seconds, and after as many more the process is given up
    (EDEADLK), as flux-core's sdexec does for job shells.
    """
    sec = opts.get(STOP_TIMER_SEC_OPTION)
    sig = opts.get(STOP_TIMER_SIGNAL_OPTION)
    seconds = None if sec is None else _whole_int(sec, STOP_TIMER_SEC_OPTION, 0)
    signum = 9 if sig is None else _whole_int(sig, STOP_TIMER_SIGNAL_OPTION, 1)
    if not 0 < signum < 65:
        raise SdexecError(errno.EINVAL, f"invalid {STOP_TIMER_SIGNAL_OPTION}: {sig}")
    if seconds is not None and seconds < 0:
        seconds = None  # a negative time turns the timer off, as in flux-core
    return seconds, signum


def _idempotency_key(opts: Mapping[str, str]) -> str | None:
    """The exec's idempotency key (EINVAL if it is not 1-128 printable, non-blank bytes)."""
    key = opts.get(KEY_OPTION)
    if key is None:
        return None
    if (
        not key
        or len(key.encode("utf-8", "surrogatepass")) > KEY_MAX
        or not key.isprintable()
        or any(c.isspace() for c in key)
    ):
        raise SdexecError(
            errno.EINVAL,
            f"{KEY_OPTION} must be 1 to {KEY_MAX} bytes of printable text without spaces",
        )
    return key


def _terminal(
    cmd: Command, flags: ExecFlag, local_flags: LocalFlag, streaming: bool
) -> tuple[int, int] | None:
    """The window size of the terminal an exec asks for (``SDEXEC_PTY``), if it asks.

    A streaming exec's terminal is relayed by the server; a background
    one's is kept by a holder of its own (:mod:`sdexec.unit.pty_holder`).
    """
    text = cmd.opts.get(pty.PTY_OPTION)
    if text is None:
        return None
    winsize = pty.parse_winsize(text)
    if local_flags & LocalFlag.STDIO_FALLTHROUGH:
        raise SdexecError(errno.EINVAL, f"{pty.PTY_OPTION} excludes stdio-fallthrough")
    if cmd.channels:
        raise SdexecError(errno.EINVAL, f"{pty.PTY_OPTION} cannot be combined with channels")
    if streaming and not flags & ExecFlag.STDOUT:
        raise SdexecError(errno.EINVAL, f"{pty.PTY_OPTION} needs the stdout flag")
    return winsize


def _unit_name(opts: Mapping[str, str]) -> str | None:
    name = opts.get(NAME_OPTION)
    if not name:
        return None
    return name if name.endswith(".service") else name + ".service"


def _whole_int(raw: str, what: str, empty: int) -> int:
    text = raw.strip()
    if not text:
        return empty
    try:
        return int(text, 10)
    except ValueError:
        raise SdexecError(errno.EINVAL, f"invalid {what}: {raw}") from None


def _parse_size(raw: str) -> int:
    mult = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = raw.strip().lower()
    if text and text[-1] in mult:
        return int(text[:-1]) * mult[text[-1]]
    return int(text)


@dataclass(slots=True)
class ExecRequest:
    cmd: Command
    flags: ExecFlag
    local_flags: LocalFlag
    options: ExecOptions = field(default_factory=ExecOptions)


@dataclass(slots=True)
class Target:
    """A process named by pid or, when given, by label (which wins)."""

    pid: int
    label: str | None

    def __str__(self) -> str:
        return self.label if self.label is not None else str(self.pid)


@dataclass(slots=True)
class AttachRequest:
    """An ``attach``: its target, and the output streams it asks for (``flags``)."""

    target: Target
    flags: ExecFlag

    def streams(self) -> frozenset[str]:
        """The output streams forwarded for this attach (RFC 42: the attach flags)."""
        return frozenset(
            name
            for name, flag in (("stdout", ExecFlag.STDOUT), ("stderr", ExecFlag.STDERR))
            if self.flags & flag
        )


@dataclass(slots=True)
class KillRequest:
    target: Target
    signum: int


@dataclass(slots=True)
class WriteRequest:
    matchtag: int
    stream: str
    data: bytes
    eof: bool


# --- field helpers -----------------------------------------------------------


def _get(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{what}: missing '{key}'")
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: '{key}' has the wrong type")
    return value


def _opt(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    if key not in obj or obj[key] is None:
        return None
    return _get(obj, key, typ, what)


def _str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ProtocolError(f"{what} must be an object of strings")
    return value


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{what} must be an array of strings")
    return value


def _label(obj: dict[str, Any], what: str) -> str | None:
    label: str | None = _opt(obj, "label", str, what)
    if label is not None:
        check_label(label)
    return label


def check_label(label: str) -> None:
    """EINVAL, with the reason, for what cannot be a label (:mod:`sdexec.proto.labels`)."""
    problem = label_problem(label)
    if problem is not None:
        shown = label if len(label) <= 40 else label[:40] + "..."
        raise SdexecError(errno.EINVAL, f"invalid label {shown!r}: {problem}")


# --- requests ------------------------------------------------------------------


def parse_command(obj: Any) -> Command:
    if not isinstance(obj, dict):
        raise ProtocolError("cmd must be an object")
    cmdline = _str_list(_get(obj, "cmdline", list, "cmd"), "cmd.cmdline")
    if not cmdline:
        raise ProtocolError("cmd.cmdline must have at least one element")
    env = _str_map(_get(obj, "env", dict, "cmd"), "cmd.env")
    # opts and channels are REQUIRED by the RFC; be lenient when absent, as
    # flux-core is, but strict about their types.
    opts = _str_map(obj.get("opts", {}), "cmd.opts")
    channels = _str_list(obj.get("channels", []), "cmd.channels")
    raw_chans = obj.get("msgchans", obj.get("msgchan", []))
    if raw_chans is None:
        raw_chans = []
    if not isinstance(raw_chans, list):
        raise ProtocolError("cmd.msgchans must be an array")
    msgchans = []
    for ch in raw_chans:
        if not isinstance(ch, dict):
            raise ProtocolError("cmd.msgchans entries must be objects")
        msgchans.append(MsgChan(_get(ch, "name", str, "msgchan"), _get(ch, "uri", str, "msgchan")))
    return Command(
        cmdline=cmdline,
        env=env,
        opts=opts,
        channels=channels,
        cwd=_opt(obj, "cwd", str, "cmd"),
        label=_label(obj, "cmd"),
        msgchans=msgchans,
    )


def parse_exec(obj: dict[str, Any], *, streaming: bool = False) -> ExecRequest:
    """An exec request, its options parsed too (:func:`parse_options`).

    ``streaming``: the request's RFC 6 STREAMING flag: a streaming exec's
    status goes to its client, so it cannot be waitable (EINVAL).
    """
    cmd = parse_command(_get(obj, "cmd", dict, "exec"))
    flags = ExecFlag(_known_bits(_get(obj, "flags", int, "exec"), ExecFlag, "exec flags"))
    local_flags = LocalFlag(
        _known_bits(_opt(obj, "local_flags", int, "exec") or 0, LocalFlag, "exec local_flags")
    )
    if streaming and flags & ExecFlag.WAITABLE:
        raise SdexecError(errno.EINVAL, "waitable flag only supported in background mode")
    return ExecRequest(cmd, flags, local_flags, parse_options(cmd, flags, local_flags, streaming))


def _known_bits(value: int, kind: type[enum.IntFlag], what: str) -> int:
    """``value`` if it has only ``kind``'s bits; else EINVAL (never masked: an
    unknown bit is a client that means something this server does not do)."""
    known = 0
    for member in kind:
        known |= int(member)
    if value < 0 or value & ~known:
        raise SdexecError(errno.EINVAL, f"unknown bits in {what} ({value:#x})")
    return value


def parse_target(obj: dict[str, Any], what: str) -> Target:
    """The process a request names.  A label that no exec could have created
    because it is digits only is still a label here: looking it up finds
    nothing (ENOENT), as for any unknown label; other bad labels are EINVAL."""
    label: str | None = _opt(obj, "label", str, what)
    if label is not None and not (label.isascii() and label.isdigit()):
        check_label(label)
    if label is not None:
        pid = obj.get("pid", -1)
        return Target(pid if isinstance(pid, int) else -1, label)
    return Target(_get(obj, "pid", int, what), None)


def parse_attach(obj: dict[str, Any]) -> AttachRequest:
    target = parse_target(obj, "attach")
    flags = _known_bits(_get(obj, "flags", int, "attach"), ExecFlag, "attach flags")
    return AttachRequest(target, ExecFlag(flags))


def parse_kill(obj: dict[str, Any]) -> KillRequest:
    target = parse_target(obj, "kill")
    signum = _get(obj, "signum", int, "kill")
    if not 0 < signum < 65:
        raise SdexecError(errno.EINVAL, f"invalid signal number {signum}")
    return KillRequest(target, signum)


def parse_write(obj: dict[str, Any]) -> WriteRequest:
    matchtag = _get(obj, "matchtag", int, "write")
    io = _get(obj, "io", dict, "write")
    stream = _get(io, "stream", str, "write.io")
    data = decode_io_data(io)
    eof = bool(_opt(io, "eof", bool, "write.io"))
    return WriteRequest(matchtag, stream, data, eof)


# --- wait statuses -----------------------------------------------------------


def describe_status(status: int) -> str:
    """A wait(2) status in words: ``exit 3``, ``signal 15 (SIGTERM)``, ``... core dumped``."""
    signum = status & 0x7F
    if signum == 0:
        return f"exit {(status >> 8) & 0xFF}"
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"SIG{signum}"
    core = ", core dumped" if status & 0x80 else ""
    return f"signal {signum} ({name}){core}"


def end_line(label: str | None, name: str, pid: int, status: int) -> str:
    """How a background process ended, as Flux's subprocess servers log it:
    ``[LABEL: ]NAME[PID]: Exit N`` or ``...: Killed by signal N``."""
    signum = status & 0x7F
    how = f"Killed by signal {signum}" if signum else f"Exit {(status >> 8) & 0xFF}"
    prefix = f"{label}: " if label else ""
    return f"{prefix}{name}[{pid}]: {how}"


def status_fields(status: int) -> dict[str, Any]:
    """A wait(2) status as log fields: ``exit_code``, or ``signal`` (and ``core_dumped``)."""
    signum = status & 0x7F
    if signum == 0:
        return {"exit_code": (status >> 8) & 0xFF}
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = str(signum)
    fields: dict[str, Any] = {"signal": name}
    if status & 0x80:
        fields["core_dumped"] = True
    return fields


# --- responses -----------------------------------------------------------------


def io_object(stream: str, rank: str, data: bytes | None, eof: bool = False) -> dict[str, Any]:
    """An RFC 24 io object: UTF-8 text when the bytes are valid UTF-8, else base64."""
    io: dict[str, Any] = {"stream": stream, "rank": rank}
    if data:
        try:
            io["data"] = data.decode("utf-8")
        except UnicodeDecodeError:
            io["data"] = b64.encode(data).decode("ascii")
            io["encoding"] = "base64"
    if eof:
        io["eof"] = True
    return io


def started(pid: int) -> dict[str, Any]:
    return {"type": "started", "pid": pid}


def stopped(pid: int) -> dict[str, Any]:
    return {"type": "stopped", "pid": pid}


def finished(pid: int, status: int, reason: str | None = None) -> dict[str, Any]:
    """``finished``; ``reason`` (an sdexec extension) is systemd's ``Result`` when the
    status does not tell it, such as ``oom-kill``."""
    resp: dict[str, Any] = {"type": "finished", "pid": pid, "status": status}
    if reason:
        resp["reason"] = reason
    return resp


def output(pid: int, io: dict[str, Any]) -> dict[str, Any]:
    return {"type": "output", "pid": pid, "io": io}


def add_credit(channels: dict[str, int]) -> dict[str, Any]:
    return {"type": "add-credit", "channels": channels}


def command_object(cmd: Command) -> dict[str, Any]:
    """The RFC 42 command object of ``cmd``, as an ``attached`` response carries it.

    ``channels`` is empty: an attach forwards no auxiliary channel, and a
    Flux client waits for an EOF on every channel the object names.
    """
    obj: dict[str, Any] = {
        "cmdline": list(cmd.cmdline),
        "env": dict(cmd.env),
        "opts": dict(cmd.opts),
        "channels": [],
    }
    if cmd.cwd is not None:
        obj["cwd"] = cmd.cwd
    if cmd.label is not None:
        obj["label"] = cmd.label
    return obj


def attached(pid: int, flags: int, cmd: Command) -> dict[str, Any]:
    """``attached``: the pid, the flags the process was started with (the
    original RFC 42 text) and its command object (the current text)."""
    return {"type": "attached", "pid": pid, "flags": flags, "cmd": command_object(cmd)}
