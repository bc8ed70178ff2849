"""RFC 42 subprocess server protocol: request schemas and response builders.

Theory of operation
-------------------
Each request payload is validated here, once, into a typed object; a missing
or mistyped REQUIRED field is EPROTO, as RFC 42 "Request Authentication"
asks for the signature JSON object and as flux-core does for plain payloads.
Values that are well-typed but unacceptable (an empty label, a bad signal
number) are EINVAL.  Response payloads are built by small functions so the
wire shape lives in one place.

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
from sdexec.proto import b64
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

    def opt(self, name: str) -> str | None:
        return self.opts.get(name)

    def stdin_bufsize(self) -> int:
        raw = self.opts.get("stdin_BUFSIZE")
        if raw is None:
            return DEFAULT_STDIN_BUFSIZE
        try:
            size = _parse_size(raw)
        except ValueError:
            raise SdexecError(errno.EINVAL, f"invalid stdin_BUFSIZE: {raw}") from None
        if size < 1:
            raise SdexecError(errno.EINVAL, f"invalid stdin_BUFSIZE: {raw}")
        return size

    def output_bufsize(self, stream: str) -> int:
        """``<stream>_BUFSIZE`` of an output stream (absent or 0: the default)."""
        raw = self.opts.get(f"{stream}_BUFSIZE")
        if raw is None:
            return DEFAULT_OUTPUT_BUFSIZE
        try:
            size = _parse_size(raw)
        except ValueError:
            raise SdexecError(errno.EINVAL, f"invalid {stream}_BUFSIZE: {raw}") from None
        if size < 0:
            raise SdexecError(errno.EINVAL, f"invalid {stream}_BUFSIZE: {raw}")
        return size or DEFAULT_OUTPUT_BUFSIZE

    def line_buffer(self, stream: str, default: bool) -> bool:
        """``<stream>_LINE_BUFFER``: one output response per line (``true``/``false``)."""
        raw = self.opts.get(f"{stream}_LINE_BUFFER")
        if raw is None:
            return default
        value = raw.strip().lower()
        if value not in ("true", "false"):
            raise SdexecError(
                errno.EINVAL, f"invalid {stream}_LINE_BUFFER: {raw} (expected true or false)"
            )
        return value == "true"

    def stop_timer(self) -> tuple[int | None, int]:
        """(seconds, signal) of ``SDEXEC_STOP_TIMER_SEC``/``_SIGNAL``; seconds None: off.

        Once a unit is stopping, the signal goes to its main process after
        that many seconds, and after as many more the process is given up
        (EDEADLK), as flux-core's sdexec does for job shells.
        """
        sec = self.opts.get("SDEXEC_STOP_TIMER_SEC")
        sig = self.opts.get("SDEXEC_STOP_TIMER_SIGNAL")
        seconds = None if sec is None else _whole_int(sec, "SDEXEC_STOP_TIMER_SEC", 0)
        signum = 9 if sig is None else _whole_int(sig, "SDEXEC_STOP_TIMER_SIGNAL", 1)
        if not 0 < signum < 65:
            raise SdexecError(errno.EINVAL, f"invalid SDEXEC_STOP_TIMER_SIGNAL: {sig}")
        if seconds is not None and seconds < 0:
            seconds = None  # a negative time turns the timer off, as in flux-core
        return seconds, signum


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


def parse_exec(obj: dict[str, Any]) -> ExecRequest:
    cmd = parse_command(_get(obj, "cmd", dict, "exec"))
    flags = _known_bits(_get(obj, "flags", int, "exec"), ExecFlag, "exec flags")
    local_flags = _known_bits(
        _opt(obj, "local_flags", int, "exec") or 0, LocalFlag, "exec local_flags"
    )
    return ExecRequest(cmd, ExecFlag(flags), LocalFlag(local_flags))


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
