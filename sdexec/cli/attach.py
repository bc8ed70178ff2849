"""``sdexec attach``: follow a background process's output and wait for its end.

The server replays what the process wrote before (from the journal) and then
follows it live.  Ctrl-C detaches: the process goes on in the background.
Any number of clients may attach at once.  The request asks the server not
to reap (``"reap": false``): ``sdexec wait`` still collects a waitable
process's status afterwards, and its output stays readable with ``logs``.
"""

from __future__ import annotations

from sdexec.base.errors import SdexecError
from sdexec.cli.common import EXIT_INTERRUPTED, EXIT_SDEXEC_FAILED, connect, error, target_payload
from sdexec.cli.signing import sign_options
from sdexec.cli.stream import pump, target
from sdexec.client.exec import exit_code

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

ATTACH_TOPIC = "sdexec.attach"


def run(args: argparse.Namespace) -> int:
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

    try:
        uri, nodeid = target(args)
        with connect(uri, sign_options(args)) as handle:
            try:
                pump(
                    handle,
                    ATTACH_TOPIC,
                    {**target_payload(args.target), "flags": 0, "reap": False},
                    other,
                    nodeid=nodeid,
                )
            except KeyboardInterrupt:
                error(
                    f"attach: detached from {args.target}; it goes on running "
                    f"(stop it with: sdexec kill {args.target})"
                )
                return EXIT_INTERRUPTED
    except SdexecError as exc:
        error(f"attach: {args.target}: {exc.message}")
        return EXIT_SDEXEC_FAILED
    if not status:
        error(f"attach: {args.target}: the stream ended without a finished response")
        return EXIT_SDEXEC_FAILED
    return exit_code(status[-1])
