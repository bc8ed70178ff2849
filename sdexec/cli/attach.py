"""``sdexec attach``: follow a background process's output and wait for its end.

The server replays what the process wrote before (from the journal) and then
follows it live.  Ctrl-C detaches: the process goes on in the background.
The request is a *follower* (``"follow": true``, an sdexec extension of RFC
42's attach): any number of them may follow a process at once, beside an
RFC 42 client's attach or ``wait``, and a follower reaps nothing, so
``sdexec wait`` still collects a waitable process's status afterwards; its
output stays readable with ``logs``.

A background terminal (``exec --bg --pty``) shows its screen instead of
a replay, and then follows it (:mod:`sdexec.client.attach`).  From a
terminal, the attach asks to be its writer (``"terminal": true`` and the
window size): the terminal it had before is taken over; ``--read-only``
only watches.  The detach key (``^]``; ``--detach-key``) leaves.
"""

from __future__ import annotations

import os

from sdexec.base.errors import SdexecError
from sdexec.cli.common import EXIT_INTERRUPTED, EXIT_SDEXEC_FAILED, connect, error
from sdexec.cli.signing import sign_options
from sdexec.cli.stream import first_response, follow, target
from sdexec.client.exec import exit_code

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from sdexec.client.blocking import BlockingHandle

ATTACH_TOPIC = "sdexec.attach"


def run(args: argparse.Namespace) -> int:
    from sdexec.client.terminal import DEFAULT_DETACH_KEY, parse_detach_key

    try:
        detach_key = parse_detach_key(getattr(args, "detach_key", None) or DEFAULT_DETACH_KEY)
    except SdexecError as exc:
        error(f"attach: {exc.message}")
        return EXIT_SDEXEC_FAILED
    interactive = not getattr(args, "read_only", False) and os.isatty(0)
    # stdout and stderr (RFC 42: the attach flags name the streams forwarded).
    payload: dict[str, Any] = {**dict(args.target_ref), "flags": 3, "follow": True}
    if interactive:
        from sdexec.client.terminal import window_size
        from sdexec.proto import pty

        payload[pty.ATTACH_TERMINAL] = True
        payload[pty.ATTACH_WINSIZE] = pty.format_winsize(*window_size(0))
    try:
        uri, nodeid = target(args)
        with connect(uri, sign_options(args)) as handle:
            handle.nodeid = nodeid  # the keys typed follow the attach to its rank
            tag = handle.request(ATTACH_TOPIC, payload, streaming=True)
            attached = first_response(handle, tag)
            if attached.get("pty") is True:
                return _terminal(args, handle, tag, attached, detach_key)
            return _plain(args, handle, tag, attached)
    except SdexecError as exc:
        error(f"attach: {args.target}: {exc.message}")
        return EXIT_SDEXEC_FAILED


def _plain(
    args: argparse.Namespace, handle: BlockingHandle, tag: int, first: dict[str, Any]
) -> int:
    status: list[int] = []

    def other(resp: dict[str, Any]) -> None:
        kind = resp.get("type")
        if kind == "finished" and isinstance(resp.get("status"), int):
            status.append(int(resp["status"]))
        elif kind == "stopped":
            error(
                f"attach: {args.target}: stopped (continue it with: sdexec kill -s CONT "
                f"{args.target})"
            )

    other(first)
    try:
        follow(handle, tag, other)
    except KeyboardInterrupt:
        error(
            f"attach: detached from {args.target}; it goes on running "
            f"(stop it with: sdexec kill {args.target})"
        )
        return EXIT_INTERRUPTED
    if not status:
        error(f"attach: {args.target}: the stream ended without a finished response")
        return EXIT_SDEXEC_FAILED
    return exit_code(status[-1])


def _terminal(
    args: argparse.Namespace,
    handle: BlockingHandle,
    tag: int,
    attached: dict[str, Any],
    detach_key: bytes | None,
) -> int:
    """A background terminal: its screen, then the program, until it ends or we leave."""
    from sdexec.client import attach
    from sdexec.client.blocking import SignalPipe
    from sdexec.client.terminal import AltScreen, RawTerminal, leave_sequence, window_size

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        import signal as _signal
    else:
        import _signal

    writer = attached.get("stdin") is True
    keys = os.isatty(0)
    signals = SignalPipe(
        (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGWINCH, _signal.SIGCONT)
    )
    terminal = RawTerminal(0) if keys else None
    alt = AltScreen()
    try:
        end = attach.run_terminal_attach(
            handle,
            tag,
            writer=writer,
            stdin_fd=0 if keys else None,
            detach_key=detach_key,
            signals=signals,
            winsize=lambda: window_size(0),
            on_cont=terminal.enter if terminal is not None else None,
            alt=alt,
        )
    finally:
        if os.isatty(1):
            ended = "end" in locals() and end.how == attach.ENDED
            os.write(1, leave_sequence(alt, newline=not ended))
        if terminal is not None:
            terminal.restore()
        signals.restore()
    target = args.target
    if end.how == attach.ENDED:
        return exit_code(end.status)
    if end.how == attach.TAKEN_OVER:
        error(f"attach: detached from {target}: another client took the terminal over")
        return 0
    again = f"it goes on running (come back with: sdexec attach {target})"
    if end.how == attach.SIGNALLED:
        error(f"attach: {_signal.strsignal(end.signum)}; detached from {target}; {again}")
        return 128 + end.signum
    error(f"attach: detached from {target}; {again}")
    return 0
