"""The exec helper: gives a unit's command its RFC 42 channel fds, then becomes it.

Theory of operation
-------------------
systemd hands a unit only three descriptors of ours (``StandardInput``/
``Output``/``ErrorFileDescriptor``), but an RFC 42 channel is "a socketpair
... one end passed to the subprocess in an environment variable whose name
is the same as the channel name" (RFC 42 "Command Object", ``channels``).
So, for an exec that has channels, the server runs this file as the unit's
``ExecStart`` in front of the command::

    PYTHON -I -S .../sdexec/unit/channel_exec.py EXE ARGV0 ARG...

and the unit's *stdin* is not the command's stdin but one end of a private
``SOCK_SEQPACKET`` socketpair, the **control socket**.  Before it even asks
systemd to start the unit, the server sends one message on its end of it:

* data: ``MAGIC NUL FLAGS NUL NAME NUL NAME...`` (see :func:`encode_header`);
* ``SCM_RIGHTS``: the command's real stdin, then the far end of each
  channel's socketpair, in the order of the names.

The message waits in the socket buffer (the kernel keeps the fds alive in
flight), so the helper never waits for the server: it reads the message
from fd 0, puts the real stdin on fd 0 (closing the control socket),
places the channels on fds 3, 4, ... in order, sets each channel's
variable to its fd number, and ``execve``\\ s the command.  Same pid, so
the unit's ``MainPID``, its cgroup and its exit status are the command's;
only the start of the unit differs.

The same helper gives a background terminal's command its terminal (the
``t`` flag, no channels): the "real stdin" is then the pty's slave, which
goes to fds 0, 1 and 2 and becomes the controlling terminal of the
command (``TIOCSCTTY``; systemd has made it a session leader).  Passing the
slave through systemd instead (``StandardInputFileDescriptor`` and
``TTYPath``) would leave a copy of it in the manager for as long as the
unit is active: for a waitable unit (``RemainAfterExit``) after the command
has exited too, and the terminal would never close (see
:mod:`sdexec.unit.pty_holder`).

Faithfulness to what the command would have got without the helper:

* the environment is the one the helper was *started* with, read back from
  ``/proc/self/environ``, not ``os.environ``: CPython adds
  ``LC_CTYPE=C.UTF-8`` to its own environment in the C locale (PEP 538),
  and that must not leak into the command;
* CPython ignores SIGPIPE and SIGXFSZ at start-up, and ignored signals
  survive ``execve``; the helper restores SIGXFSZ to the default and SIGPIPE
  to what the unit asked for (systemd's ``IgnoreSIGPIPE=``, sent by the
  server in the header);
* if systemd gave stdout or stderr the same file as stdin (its
  ``StandardOutput=inherit``), they get the real stdin too.

If the command cannot be executed (the server checks this before starting
the unit, so only a race or a bad interpreter line gets here), the helper
writes ``sdexec: ARGV0: REASON`` on stderr and exits 127 (not found) or 126,
as a shell does.

Start-up cost: ``-I`` (isolated: no ``PYTHON*`` variables, no user site,
no script directory on ``sys.path``) and ``-S`` (no ``site``) keep CPython's
start-up to the bare interpreter, and the server runs this file's cached
bytecode (:func:`sdexec.server.channels.helper_script`), which saves
compiling it each time (about 4 ms).  It imports only ``os``, ``sys``,
``_socket``, ``_signal`` and ``fcntl``.  Measured on the project's 2-vCPU
VMs (docs/records/performance.md, "Channels"): the helper uses about 17 ms
of CPU, and ``exec`` of ``/bin/true`` through the server takes a median
36 ms with one channel against 19 ms without (+17 to +19 ms on an idle
machine).  Execs without channels never run it.

The module must stay runnable with no package context: it is run as a
plain file, and imports nothing from :mod:`sdexec`.
"""

from __future__ import annotations

import os
import sys

MAGIC = b"sdexec-exec-helper/1"
#: Channels per exec; the kernel limit for one SCM_RIGHTS message is 253 fds.
MAX_CHANNELS = 64
#: The first fd a channel gets in the command; the next ones follow in order.
FIRST_CHANNEL_FD = 3
#: Exit codes when the command cannot be run, as a shell uses them.
EXIT_NOT_FOUND = 127
EXIT_CANNOT_EXEC = 126

_FD_SIZE = 4  # sizeof(int)


class HelperError(Exception):
    """The helper cannot prepare the command (a bad or missing control message)."""


# --- the control message (pure) ------------------------------------------------------


def encode_header(names: list[str], ignore_sigpipe: bool, terminal: bool = False) -> bytes:
    """The data part of the control message for channels ``names``.

    FLAGS is ``1`` (ignore SIGPIPE) or ``0``, then ``t`` if the stdin sent
    is a terminal to make the controlling one.
    """
    if len(names) > MAX_CHANNELS:
        raise ValueError(f"at most {MAX_CHANNELS} channels")
    for name in names:
        if not name or "\0" in name or "=" in name:
            raise ValueError(f"invalid channel name {name!r}")
    flags = (b"1" if ignore_sigpipe else b"0") + (b"t" if terminal else b"")
    fields = [MAGIC, flags, *(n.encode() for n in names)]
    return b"\0".join(fields)


def decode_header(data: bytes) -> tuple[list[str], bool, bool]:
    """(channel names, ignore SIGPIPE, terminal) from the data part of a control message."""
    fields = data.split(b"\0")
    if len(fields) < 2 or fields[0] != MAGIC or fields[1] not in (b"0", b"1", b"0t", b"1t"):
        raise HelperError("not an sdexec exec-helper control message")
    names = [f.decode("utf-8", "surrogateescape") for f in fields[2:]]
    if any(not n for n in names) or len(names) > MAX_CHANNELS:
        raise HelperError("bad channel list in the control message")
    return names, fields[1][:1] == b"1", fields[1][1:] == b"t"


def unpack_fds(payload: bytes) -> list[int]:
    """The fds of one SCM_RIGHTS ancillary payload (native ints)."""
    usable = len(payload) - len(payload) % _FD_SIZE
    return [
        int.from_bytes(payload[i : i + _FD_SIZE], sys.byteorder, signed=True)
        for i in range(0, usable, _FD_SIZE)
    ]


def channel_fds(count: int) -> list[int]:
    """The fd numbers the command's channels get, in the order of the names."""
    return list(range(FIRST_CHANNEL_FD, FIRST_CHANNEL_FD + count))


def exec_environment(initial: bytes, channels: dict[str, int]) -> dict[bytes, bytes]:
    """The command's environment: ``initial`` (as in /proc/self/environ) plus channels.

    An entry without ``=`` or with an empty name is dropped (``execve``
    cannot pass it on); of two entries with the same name the first one
    wins, as ``getenv`` would have found it.  A channel's variable replaces
    any variable of the same name.
    """
    env: dict[bytes, bytes] = {}
    for entry in initial.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key and key not in env:
            env[key] = value
    for name, fd in channels.items():
        env[name.encode("utf-8", "surrogateescape")] = str(fd).encode()
    return env


def exit_code_for(errnum: int | None) -> int:
    """127 when the command does not exist, 126 when it cannot be executed."""
    return EXIT_NOT_FOUND if errnum in (2, 20) else EXIT_CANNOT_EXEC  # ENOENT, ENOTDIR


# --- doing it -------------------------------------------------------------------------


def receive(control_fd: int) -> tuple[list[str], bool, bool, list[int]]:
    """Read the one control message: (names, ignore SIGPIPE, terminal, fds)."""
    import _socket

    try:
        sock = _socket.socket(fileno=control_fd)
    except OSError as exc:
        raise HelperError(f"no control socket on fd {control_fd}: {exc.strerror}") from None
    try:
        space = _socket.CMSG_SPACE((MAX_CHANNELS + 1) * _FD_SIZE)
        data, ancillary, flags, _ = sock.recvmsg(65536, space, _socket.MSG_CMSG_CLOEXEC)
    except OSError as exc:
        raise HelperError(f"cannot read the control message: {exc.strerror}") from None
    finally:
        sock.detach()  # fd 0 is replaced below, not closed here
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += unpack_fds(payload)
    if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
        raise HelperError("the control message was truncated")
    names, ignore_sigpipe, terminal = decode_header(data)
    if len(fds) != len(names) + 1:
        raise HelperError(f"expected {len(names) + 1} fds, got {len(fds)}")
    return names, ignore_sigpipe, terminal, fds


def place(received: list[int], targets: list[int]) -> None:
    """Move each received fd to its target number, inheritable, closing the originals.

    Everything is first moved above every target, so that no target is
    overwritten while it still holds a received fd.
    """
    import fcntl

    base = max([*targets, 2]) + 1
    moved = []
    for fd in received:
        moved.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base))
        os.close(fd)
    for fd, target in zip(moved, targets, strict=True):
        os.dup2(fd, target)  # the copy is inheritable
        os.close(fd)


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _restore_signals(ignore_sigpipe: bool) -> None:
    import _signal  # type: ignore[import-not-found]  # not `signal`: it builds enums

    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN if ignore_sigpipe else _signal.SIG_DFL)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)


def _controlling_terminal(fd: int) -> None:
    """Make the terminal on ``fd`` the controlling one of a new session led by us."""
    import fcntl
    import termios

    try:
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
    except OSError:
        os.setsid()  # not a session leader yet (systemd makes one of every service)
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def _initial_environment() -> bytes:
    try:
        with open("/proc/self/environ", "rb") as f:
            return f.read()
    except OSError:  # no /proc: the best we have
        return b"\0".join(k + b"=" + v for k, v in os.environb.items())


def _fail(message: str, code: int) -> int:
    try:  # noqa: SIM105 - contextlib is one import too many at start-up
        os.write(2, f"sdexec: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass
    return code


def main(argv: list[str]) -> int:
    """``channel_exec.py EXE ARGV0 [ARG...]``: only returns if the command cannot run."""
    if len(argv) < 3:
        return _fail("exec helper: usage: channel_exec.py EXE ARGV0 [ARG...]", 2)
    exe, args = argv[1], argv[2:]
    try:
        names, ignore_sigpipe, terminal, fds = receive(0)
    except HelperError as exc:
        return _fail(f"exec helper: {exc}", EXIT_NOT_FOUND)
    targets = channel_fds(len(names))
    inherit = [fd for fd in (1, 2) if _same_file(fd, 0)]  # StandardOutput=inherit
    place(fds, [0, *targets])
    for fd in inherit:
        os.dup2(0, fd)
    if terminal:
        try:
            _controlling_terminal(0)
        except OSError as exc:
            return _fail(f"exec helper: no controlling terminal: {exc.strerror}", EXIT_CANNOT_EXEC)
    env = exec_environment(_initial_environment(), dict(zip(names, targets, strict=True)))
    _restore_signals(ignore_sigpipe)
    try:
        os.execve(exe, args, env)
    except OSError as exc:
        return _fail(f"{args[0]}: {exc.strerror}", exit_code_for(exc.errno))
    return EXIT_CANNOT_EXEC  # not reached: execve does not return on success


if __name__ == "__main__":
    sys.exit(main(sys.argv))
