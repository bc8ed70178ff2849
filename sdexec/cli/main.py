"""The ``sdexec`` command: parse the command line, run one command's module.

Theory of operation
-------------------
Start-up time is part of every remote command's latency: an ``sdexec exec
/bin/true`` is Python's own start, this module, the client, and one round
trip to the server.  So a plain ``sdexec exec`` is parsed by
:mod:`sdexec.cli.quick`, and only other command lines pay for argparse
(:mod:`sdexec.cli.parser`); it connects to the server before it imports
the client (:func:`sdexec.transport.connector.open_early`).  Each command's
code is imported only when it runs: ``sdexec.cli.<command>.run``, or
``sdexec.cli.fanout.run_<command>`` for ``-r``.  The client path never
imports asyncio, dbus_fast, zmq, structlog, ``json``, ``enum`` or ``re``
(see :mod:`sdexec.client.blocking`).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

_FANOUT = frozenset({"exec", "kill", "wait", "ps"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sdexec`` command line; returns the exit status."""
    words = sys.argv[1:] if argv is None else list(argv)
    args: Any = None
    many = False
    if words[:1] == ["exec"]:
        from sdexec.cli.quick import parse_exec

        args = parse_exec(words[1:])
        if args is not None:
            # Connected before the client is imported: see sdexec.transport.connector.
            from sdexec.transport.connector import open_early

            open_early(args.uri)
    if args is None:
        from sdexec.cli.parser import parse

        args, many = parse(words)
    try:
        if args.command == "exec" and not many:
            from sdexec.cli import exec as exec_command

            return exec_command.run(args)
        if args.command == "serve":
            return _serve(args)
        import importlib

        if many and args.command in _FANOUT:
            fanout = importlib.import_module("sdexec.cli.fanout")
            return int(getattr(fanout, f"run_{args.command}")(args))
        module = importlib.import_module(f"sdexec.cli.{args.command}")
        return int(module.run(args))
    except KeyboardInterrupt:
        return 130


def run() -> None:
    """The ``sdexec`` program: :func:`main`, then exit at once.

    The interpreter's teardown (module and object finalization) would add
    ~4 ms to every command after its work is done; a command has nothing
    left to clean up but its standard streams, so they are flushed and the
    process exits.  ``serve`` and a failed flush take the usual way out.
    """
    status = main()
    if sys.argv[1:2] == ["serve"]:
        sys.exit(status)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        sys.exit(status)  # Python reports what it can as usual
    os._exit(status)


def _serve(args: Any) -> int:
    import importlib

    try:
        daemon = importlib.import_module("sdexec.server.daemon")
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("sdexec"):
            raise
        sys.stderr.write(f"sdexec: serve: the server is not available ({exc.name})\n")
        return 1
    return int(daemon.main(args))


if __name__ == "__main__":
    run()
