"""``sdexec wait``: wait for a waitable background process (``sdexec.wait``)."""

from __future__ import annotations

from sdexec.base.errors import SdexecError
from sdexec.cli.common import EXIT_SDEXEC_FAILED, connect, error
from sdexec.cli.signing import sign_options
from sdexec.client.exec import WAIT_TOPIC, exit_code, finish_reason, reason_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    """Run ``sdexec wait``; exits with the process's status, as ``exec`` does."""
    try:
        with connect(args.uri, sign_options(args)) as handle:
            resp = handle.rpc(WAIT_TOPIC, dict(args.target_ref))
    except SdexecError as exc:
        error(f"wait: {args.target}: {exc.message}")
        return EXIT_SDEXEC_FAILED
    status = resp.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        error(f"wait: {args.target}: the server's response has no status")
        return EXIT_SDEXEC_FAILED
    reason = finish_reason(resp)
    if reason is not None:
        error(f"wait: {args.target}: the process ended: {reason_text(reason)}")
    return exit_code(status)
