"""``sdexec logs``: print a background process's stored output (``sdexec.logs``)."""

from __future__ import annotations

from sdexec.base.errors import SdexecError
from sdexec.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, connect, error
from sdexec.cli.signing import sign_options
from sdexec.cli.stream import pump, target

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

LOGS_TOPIC = "sdexec.logs"


def run(args: argparse.Namespace) -> int:
    payload = {**dict(args.target_ref), "follow": bool(args.follow)}
    if args.tail is not None:
        payload["tail"] = args.tail
    if args.since is not None:
        payload["since"] = args.since
    if args.timestamps:
        payload["timestamps"] = True
    try:
        uri, nodeid = target(args)
        with connect(uri, sign_options(args)) as handle:
            pump(
                handle,
                LOGS_TOPIC,
                payload,
                as_json=args.json,
                nodeid=nodeid,
                timestamps=args.timestamps,
            )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SdexecError as exc:
        error(f"logs: {args.target}: {exc.message}")
        return EXIT_FAILURE
    return 0
