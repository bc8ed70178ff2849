"""``sdexec kill``: send a signal to a process of the server (``sdexec.kill``)."""

from __future__ import annotations

from sdexec.base.errors import SdexecError
from sdexec.cli.common import EXIT_FAILURE, connect, error
from sdexec.cli.signing import sign_options
from sdexec.client.exec import KILL_TOPIC

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    """Run ``sdexec kill``; returns the exit status."""
    payload = dict(args.target_ref)
    payload["signum"] = args.signal
    try:
        with connect(args.uri, sign_options(args)) as handle:
            handle.rpc(KILL_TOPIC, payload)
    except SdexecError as exc:
        error(f"kill: {args.target}: {exc.message}")
        return EXIT_FAILURE
    return 0
