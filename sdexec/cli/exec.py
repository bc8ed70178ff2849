"""``sdexec exec``: run a command on the server, attached or in the background.

Attached (the default), the command's I/O and the caller's SIGINT/SIGTERM
travel over one streaming ``sdexec.exec`` RPC, driven by
:func:`sdexec.client.blocking.run_exec`; sdexec exits with the command's
status.  With ``--bg`` the request is non-streaming (RFC 42 background
mode): one ``started`` response, whose pid is printed.

With ``--pty`` the command gets a terminal of its own on the server
(:mod:`sdexec.proto.pty`) and the caller's terminal is put in raw mode
(:mod:`sdexec.client.terminal`) for as long as it runs.
"""

from __future__ import annotations

import errno
import os

from sdexec.base.errors import SdexecError
from sdexec.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_SDEXEC_FAILED,
    connect,
    error,
    exec_error_exit_code,
    exec_error_message,
)
from sdexec.cli.signing import sign_options
from sdexec.client.blocking import SignalPipe, run_exec
from sdexec.client.exec import (
    EXEC_TOPIC,
    FLAG_STDERR,
    FLAG_STDOUT,
    FLAG_WAITABLE,
    STREAMING_FLAGS,
    ExecFailed,
    ExecSession,
    build_command,
    exec_payload,
    exit_code,
    started_warnings,
)
from sdexec.client.rpc import RemoteError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from sdexec.client.blocking import BlockingHandle
# The C module: ``signal`` imports ``enum``, ~5 ms of every command's start-up.
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal

PROPERTY_PREFIX = "SDEXEC_PROP_"
STRICT_OPTION = "SDEXEC_STRICT_PROPERTIES"  # sdexec.proto.rfc42
FORWARDED_SIGNALS = (_signal.SIGINT, _signal.SIGTERM)
# With --pty: SIGWINCH and SIGCONT resize, SIGTERM and SIGHUP end the session.
TERMINAL_SIGNALS = (
    _signal.SIGINT,
    _signal.SIGTERM,
    _signal.SIGHUP,
    _signal.SIGWINCH,
    _signal.SIGCONT,
)


def command_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The RFC 42 command object for parsed ``exec`` arguments.

    The environment is the caller's with ``--env`` applied; ``-p NAME=VALUE``
    becomes the option ``SDEXEC_PROP_NAME``.  The cwd is the caller's, or
    the server's if the caller's directory no longer exists.
    """
    env = dict(os.environ)
    env.update(args.env)
    opts = dict(args.setopt)
    for name, value in args.property:
        opts[PROPERTY_PREFIX + name] = value
    if getattr(args, "strict_properties", False):
        opts[STRICT_OPTION] = "yes"
    cwd = args.cwd
    if cwd is None:
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = None
    return build_command(args.cmdline, env=env, cwd=cwd, opts=opts, label=args.label)


def exec_flags(args: argparse.Namespace) -> int:
    """RFC 42 exec flags: output and credit when attached; waitable on request.

    In background mode the server ignores the output flags (RFC 42), but they
    are recorded and tell a later ``attach`` which streams to expect.
    """
    flags = FLAG_STDOUT | FLAG_STDERR if args.bg else STREAMING_FLAGS
    if args.waitable:
        flags |= FLAG_WAITABLE
    return flags


def run(args: argparse.Namespace) -> int:
    """Run ``sdexec exec``; returns the exit status."""
    try:
        command = command_from_args(args)
    except SdexecError as exc:
        error(exc.message)
        return EXIT_FAILURE if args.bg else EXIT_SDEXEC_FAILED
    return run_command(args, command)


def run_command(args: argparse.Namespace, command: dict[str, Any]) -> int:
    """Run ``command`` as ``args`` say, on the server at ``args.uri``; through
    a broker to RFC 3 node ``args.nodeid`` if it is set (``exec -r RANK
    --pty``: see :func:`sdexec.cli.fanout.run_exec`)."""
    if args.pty and args.bg:
        return _run_background(args, command, terminal=True)
    if args.pty:
        return _run_terminal(args, command)
    if args.bg:
        return _run_background(args, command)
    return _run_attached(args, command)


def _run_background(
    args: argparse.Namespace, command: dict[str, Any], *, terminal: bool = False
) -> int:
    """``exec --bg``; with ``--pty``, a terminal that nobody is attached to yet
    (sized as the caller's terminal, if there is one, else 80x24)."""
    if terminal:
        from sdexec.client.terminal import window_size
        from sdexec.proto import pty

        size_fd = 0 if os.isatty(0) else 1
        command["opts"][pty.PTY_OPTION] = pty.format_winsize(*window_size(size_fd))
    try:
        with _connect(args) as handle:
            resp = handle.rpc(EXEC_TOPIC, exec_payload(command, exec_flags(args)))
    except RemoteError as exc:
        error(exec_error_message(command["cmdline"][0], exc.errno, exc.message))
        return EXIT_FAILURE
    except SdexecError as exc:
        error(exc.message)
        return EXIT_FAILURE
    pid = resp.get("pid")
    if resp.get("type") != "started" or not isinstance(pid, int):
        error("exec: the server's response has no pid")
        return EXIT_FAILURE
    for text in started_warnings(resp):
        error(f"warning: {text}")
    print(pid, flush=True)
    return 0


def _connect(args: argparse.Namespace) -> BlockingHandle:
    handle = connect(args.uri, sign_options(args))
    nodeid = getattr(args, "nodeid", None)
    if nodeid is not None:
        handle.nodeid = nodeid
    return handle


def _stdin_fd(args: argparse.Namespace) -> int | None:
    if args.no_stdin:
        return None
    try:
        os.fstat(0)
    except OSError:
        return None  # stdin is closed
    return 0


def _run_attached(args: argparse.Namespace, command: dict[str, Any]) -> int:
    session = ExecSession(command, flags=exec_flags(args))
    try:
        handle = _connect(args)
    except SdexecError as exc:
        error(exc.message)
        return EXIT_SDEXEC_FAILED
    with handle:
        signals = SignalPipe(FORWARDED_SIGNALS)
        try:
            status = run_exec(
                handle, session, stdin_fd=_stdin_fd(args), signals=signals, warn=error
            )
        except ExecFailed as exc:
            error(exec_error_message(session.name, exc.errno, exc.message))
            return exec_error_exit_code(exc.errno, exc.message)
        except SdexecError as exc:
            if exc.errno == errno.EINTR:
                error("interrupted; the server stops the command")
                return EXIT_INTERRUPTED
            error(exc.message)
            return EXIT_SDEXEC_FAILED
        finally:
            signals.restore()
    return exit_code(status)


def _run_terminal(args: argparse.Namespace, command: dict[str, Any]) -> int:
    """``exec --pty``: a terminal on the server, the caller's in raw mode meanwhile."""
    from sdexec.client.blocking import SignalExit
    from sdexec.client.terminal import RawTerminal, window_size
    from sdexec.proto import pty

    interactive = os.isatty(0)
    if not interactive and args.pty < 2:
        error("--pty needs a terminal on stdin (-tt forces one anyway)")
        return EXIT_SDEXEC_FAILED
    if args.no_stdin:
        error("--pty cannot be combined with --no-stdin")
        return EXIT_SDEXEC_FAILED
    size_fd = 0 if interactive else 1

    def winsize() -> tuple[int, int]:
        return window_size(size_fd)

    command["opts"][pty.PTY_OPTION] = pty.format_winsize(*winsize())
    session = ExecSession(command, flags=exec_flags(args))
    try:
        handle = _connect(args)
    except SdexecError as exc:
        error(exc.message)
        return EXIT_SDEXEC_FAILED
    with handle:
        signals = SignalPipe(TERMINAL_SIGNALS)
        terminal = RawTerminal(0) if interactive else None
        try:
            status = run_exec(
                handle,
                session,
                stdin_fd=0,
                signals=signals,
                warn=error,
                terminal=terminal,
                winsize=winsize,
            )
        except ExecFailed as exc:
            _restore(terminal)
            error(exec_error_message(session.name, exc.errno, exc.message))
            return exec_error_exit_code(exc.errno, exc.message)
        except SignalExit as exc:
            _restore(terminal)
            error(f"{_signal.strsignal(exc.signum)}; the server stops the command")
            return 128 + exc.signum
        except SdexecError as exc:
            _restore(terminal)
            error(exc.message)
            return EXIT_SDEXEC_FAILED
        finally:
            _restore(terminal)
            signals.restore()
    return exit_code(status)


def _restore(terminal: Any) -> None:
    """Put the caller's terminal back first, so that a message shows as usual."""
    if terminal is not None:
        terminal.restore()
