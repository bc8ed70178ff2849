"""RFC 42 auxiliary channels and message channels of one process.

Theory of operation
-------------------
RFC 42 "Command Object": for each name in ``cmd.channels`` "a socketpair
SHALL be created ... and one end passed to the subprocess in an environment
variable whose name is the same as the channel name".  Data flows both
ways: ``write`` requests with ``io.stream`` = the channel name go in, and
``output`` responses with that stream name come out (when the exec has the
``channel`` flag, 4); with the ``write-credit`` flag the server's
``add-credit`` responses cover the channels as they cover stdin; and EOF
travels both ways.

systemd passes a unit only its three stdio fds, so an exec with channels
runs through :mod:`sdexec.unit.channel_exec`: :func:`setup_aux` makes the unit's
stdin a ``SOCK_SEQPACKET`` control socket, queues one message on it that
carries the real stdin and the channels' far ends (``SCM_RIGHTS``), and
puts the helper in front of the command in ``ExecStartEx``; the helper moves
the fds to 3, 4, ..., sets the variables and ``execve``\\ s the command.
The message is queued before ``StartTransientUnit``, so the helper never
waits for the server.  Execs without channels are untouched.

The server's end of each channel is one ``AF_UNIX`` stream socket, used
through two descriptors:

* an :class:`~sdexec.server.pipes.OutputPipe` (the process's output, read
  only while the client keeps up, exactly like stdout) registered in
  ``Process.outputs``, so that ``Process`` forwards it, pauses it, and
  waits for its EOF before it ends the stream;
* a :class:`ChannelInput` on a ``dup`` of it, an
  :class:`~sdexec.server.pipes.InputPipe` whose EOF is ``shutdown(SHUT_WR)``:
  closing one of two descriptors of a socket would tell the process nothing,
  and closing both would also end the other direction.

A channel whose output is not forwarded (no ``channel`` flag, or a
background exec, where RFC 42 ignores the flag) is still read, and its
output dropped, so that the process never blocks on it.  A background
process's channels take their input from the attached client that holds
its input (without credit: nobody streams when it starts).

Message channels (``cmd.msgchans``) need no helper: each is a
:class:`~sdexec.server.msgchan.MsgchanListener` whose ``local://`` URI goes
into the unit's environment.

Names must be environment variable names systemd accepts
(``[A-Za-z_][A-Za-z0-9_]*``), distinct, and not ``stdin``/``stdout``/
``stderr``; at most :data:`~sdexec.unit.channel_exec.MAX_CHANNELS` channels.
A channel's input buffer is 4096 bytes unless the option ``<NAME>_BUFSIZE``
says otherwise (as ``stdin_BUFSIZE`` does for stdin).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import py_compile
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from sdexec.base.errors import SdexecError
from sdexec.proto import rfc42
from sdexec.proto.rfc42 import Command, ExecFlag
from sdexec.server.msgchan import MsgchanListener, socket_dir, target_path
from sdexec.server.pipes import InputPipe, OutputPipe
from sdexec.systemd import properties
from sdexec.unit import channel_exec

if TYPE_CHECKING:
    from sdexec.broker.request import Request
    from sdexec.broker.router import Router

log = structlog.get_logger("sdexec.channels")

HELPER_PATH = str(Path(channel_exec.__file__).resolve())
#: How the helper is started: isolated (no PYTHON* variables, user site or
#: script directory on sys.path) and without ``site``, for the fastest start.
HELPER_PYTHON_FLAGS = ("-I", "-S")
RESERVED_NAMES = frozenset({"stdin", "stdout", "stderr"})


# --- pure parts -----------------------------------------------------------------------


def validate(cmd: Command) -> None:
    """EINVAL unless every channel and msgchan name is usable (see the module doc)."""
    if len(cmd.channels) > channel_exec.MAX_CHANNELS:
        raise SdexecError(
            errno.EINVAL,
            f"too many channels ({len(cmd.channels)}, at most {channel_exec.MAX_CHANNELS})",
        )
    seen: set[str] = set()
    for kind, name in [
        *(("channel", n) for n in cmd.channels),
        *(("msgchan", m.name) for m in cmd.msgchans),
    ]:
        if not properties.env_name_is_valid(name):
            raise SdexecError(errno.EINVAL, f"invalid {kind} name {name!r}")
        if name in RESERVED_NAMES or name in seen:
            raise SdexecError(errno.EINVAL, f"{kind} name {name!r} is already in use")
        seen.add(name)
    for name in cmd.channels:
        channel_bufsize(cmd, name)
    for m in cmd.msgchans:
        target_path(m.uri)


def channel_bufsize(cmd: Command, name: str) -> int:
    """A channel's input buffer: the ``<NAME>_BUFSIZE`` option, else 4096 bytes."""
    raw = cmd.opts.get(f"{name}_BUFSIZE")
    if raw is None:
        return rfc42.DEFAULT_STDIN_BUFSIZE
    text = raw.strip().lower()
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    try:
        size = int(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        size = 0
    if size < 1:
        raise SdexecError(errno.EINVAL, f"invalid {name}_BUFSIZE: {raw}")
    return size


def ignores_sigpipe(extra: list[properties.Property]) -> bool:
    """Whether the unit ignores SIGPIPE: its ``IgnoreSIGPIPE``, systemd's default yes."""
    value = True
    for name, variant in extra:
        if name == "IgnoreSIGPIPE":
            value = bool(variant.value)
    return value


def helper_argv(exe: str, argv0: str, args: list[str]) -> list[str]:
    """The unit's argv when the helper runs the command ``exe`` as ``[argv0, *args]``."""
    return [sys.executable, *HELPER_PYTHON_FLAGS, helper_script(), exe, argv0, *args]


def helper_script() -> str:
    """The file the unit runs: the helper's bytecode when it can be had, else its source.

    CPython runs a ``.pyc`` given as the script, which saves compiling the
    helper at every exec (about 4 ms here).  The standard cache file is used
    when it is fresh, and written when it is missing or stale (even under
    ``PYTHONDONTWRITEBYTECODE``); a read-only installation without it runs
    the source.  Checked at every exec (one small read), so a cleaned cache
    never leaves a unit pointing at a missing file.
    """
    pyc = importlib.util.cache_from_source(HELPER_PATH)
    if bytecode_is_fresh(pyc, HELPER_PATH):
        return pyc
    if _compile_failed:
        return HELPER_PATH  # tried once: do not pay a compile at every exec
    try:
        py_compile.compile(HELPER_PATH, cfile=pyc, doraise=True)
    except (OSError, py_compile.PyCompileError) as exc:
        _compile_failed.append(str(exc))
        log.info("exec helper runs from source", reason=str(exc))
        return HELPER_PATH
    return pyc


_compile_failed: list[str] = []


def bytecode_is_fresh(pyc: str, source: str) -> bool:
    """Whether ``pyc`` is this interpreter's timestamp-checked bytecode of ``source``."""
    try:
        with open(pyc, "rb") as f:
            header = f.read(16)
        st = os.stat(source)
    except OSError:
        return False
    return (
        len(header) == 16
        and header[:4] == importlib.util.MAGIC_NUMBER
        and int.from_bytes(header[4:8], "little") == 0  # timestamp-based
        and int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
        and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF
    )


# --- the server's end ------------------------------------------------------------------


class ChannelOwner(Protocol):
    """What the channels use of their process (:class:`~sdexec.server.process.Process`).

    The process owns its channels, so this module says what it needs of it
    instead of importing it.
    """

    @property
    def cmd(self) -> Command: ...

    @property
    def unit(self) -> str: ...

    @property
    def flags(self) -> ExecFlag: ...

    @property
    def background(self) -> bool: ...

    @property
    def client(self) -> Request | None: ...  # the streaming requester gets the credit

    @property
    def starting(self) -> bool: ...  # credit waits for the initial add-credit

    @property
    def outputs(self) -> dict[str, OutputPipe]: ...  # forwarded: paced and awaited

    def output(self, stream: str, data: bytes, eof: bool) -> None: ...  # forwarded output


class ChannelInput(InputPipe):
    """The write side of a channel socket: EOF is ``shutdown(SHUT_WR)``."""

    __slots__ = ()

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                sock = socket.socket(fileno=self.fd)
                try:
                    sock.shutdown(socket.SHUT_WR)
                finally:
                    sock.detach()
        super().close()


class AuxChannels:
    """The channels and msgchans of one :class:`~sdexec.server.process.Process`."""

    def __init__(self, proc: ChannelOwner) -> None:
        self.proc = proc
        self.inputs: dict[str, ChannelInput] = {}
        self.bufsizes: dict[str, int] = {}
        self.outputs: list[OutputPipe] = []  # forwarded ones are also in proc.outputs
        self.msgchans: list[MsgchanListener] = []
        self._early: dict[str, int] = {}

    # --- called by Process ----------------------------------------------------------

    def write(self, stream: str, data: bytes, eof: bool) -> bool:
        """Data for a channel (True), or not a channel of this process (False)."""
        pipe = self.inputs.get(stream)
        if pipe is None:
            return False
        if data:
            pipe.write(data)
        if eof:
            pipe.write_eof()
        return True

    def started(self) -> None:
        """The process runs: the initial ``add-credit`` for the channels."""
        client = self._credit_client()
        if client is None:
            return
        client.respond(rfc42.add_credit(dict(self.bufsizes)))
        if self._early:
            client.respond(rfc42.add_credit(self._early))
            self._early = {}

    def close(self) -> None:
        for pipe in self.inputs.values():
            pipe.close()
        for out in self.outputs:
            out.close()
        for listener in self.msgchans:
            listener.close()

    # --- internals ------------------------------------------------------------------

    def _credit_client(self) -> Request | None:
        proc = self.proc
        if proc.client is None or proc.background or not proc.flags & ExecFlag.WRITE_CREDIT:
            return None
        return proc.client

    def _credit(self, name: str, n: int) -> None:
        client = self._credit_client()
        if client is None:
            return
        if self.proc.starting:  # sent after the initial credit
            self._early[name] = self._early.get(name, 0) + n
        else:
            client.respond(rfc42.add_credit({name: n}))

    def _discard(self, stream: str, data: bytes, eof: bool) -> None:
        if data:
            log.debug("channel output dropped", stream=stream, size=len(data), unit=self.proc.unit)

    def add_channel(self, name: str, mine: socket.socket, forward: bool, writable: bool) -> None:
        rfd = mine.detach()
        if writable:
            self.bufsizes[name] = channel_bufsize(self.proc.cmd, name)
            self.inputs[name] = ChannelInput(os.dup(rfd), lambda n: self._credit(name, n))
        if forward:
            out = OutputPipe(name, rfd, self.proc.output)
            self.proc.outputs[name] = out  # forwarded, paced and awaited like stdout
        else:
            out = OutputPipe(name, rfd, self._discard)
            out.resume()
        self.outputs.append(out)


def setup_aux(
    proc: ChannelOwner,
    spec: properties.UnitSpec,
    fds: list[int],
    theirs: list[int],
    *,
    router: Router,
    server_uri: str | None,
) -> tuple[list[int], AuxChannels | None]:
    """Make ``proc``'s channels and msgchans; returns the fds to pass to systemd, and them.

    Rewrites ``spec`` (helper in front, msgchan variables, the control
    socket as stdin) and appends to ``theirs`` what must be closed once the
    unit has been created.  Does nothing for a command with neither (None).
    Each msgchan's bridge is served by ``router``, its socket next to the
    server's own (``server_uri``).
    """
    cmd = proc.cmd
    if not cmd.channels and not cmd.msgchans:
        return fds, None
    validate(cmd)
    aux = AuxChannels(proc)
    streaming = not proc.background
    forward = streaming and bool(proc.flags & ExecFlag.CHANNEL)
    created: list[socket.socket] = []
    try:
        for m in cmd.msgchans:
            listener = MsgchanListener(router, m.name, m.uri, socket_dir(server_uri), proc.unit)
            aux.msgchans.append(listener)
            spec.env[m.name] = listener.uri
        if cmd.channels:
            far_ends: list[socket.socket] = []
            for name in cmd.channels:
                mine, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                created += (mine, far)
                far_ends.append(far)
                # A background process's channels take input from the attach
                # stream that holds its input (sdexec.server.process).
                aux.add_channel(name, mine, forward, writable=True)
            fds = _via_helper(spec, fds, theirs, cmd.channels, far_ends, created)
    except BaseException:
        aux.close()
        for sock in created:
            sock.close()
        raise
    for sock in created:
        sock.close()  # ours were detached into pipes; the far ends are in flight
    log.debug(
        "channels",
        channels=cmd.channels,
        msgchans=[m.name for m in cmd.msgchans],
        forwarded=forward,
        unit=proc.unit,
    )
    return fds, aux


def _via_helper(
    spec: properties.UnitSpec,
    fds: list[int],
    theirs: list[int],
    names: list[str],
    far_ends: list[socket.socket],
    created: list[socket.socket],
) -> list[int]:
    """Queue the control message and put the helper in front of the command."""
    fds = list(fds)
    if spec.stdin_fd is None:
        stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        theirs.append(stdin)
        spec.stdin_fd = len(fds)
        fds.append(stdin)
    else:
        stdin = fds[spec.stdin_fd]
    ctl_mine, ctl_unit = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    created += (ctl_mine, ctl_unit)
    header = channel_exec.encode_header(names, ignores_sigpipe(spec.extra))
    socket.send_fds(ctl_mine, [header], [stdin, *(s.fileno() for s in far_ends)])
    unit_end = ctl_unit.detach()
    theirs.append(unit_end)
    fds[spec.stdin_fd] = unit_end
    argv0 = spec.argv0 if spec.argv0 is not None else spec.argv[0]
    if spec.description is None:
        spec.description = properties.default_description([argv0, *spec.argv[1:]])
    spec.argv = helper_argv(spec.argv[0], argv0, spec.argv[1:])
    spec.argv0 = None
    return fds


def shutdown_aux(aux: Iterable[AuxChannels | None]) -> None:
    """Server shutdown: close every channel and msgchan (their bridges end)."""
    for channels in aux:
        if channels is not None:
            channels.close()
