"""``sdexec proxy``: argument handling; the proxy is :mod:`sdexec.proxy.run`."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    from sdexec.proxy.run import ProxyOptions
    from sdexec.proxy.run import run as run_proxy

    command = list(args.cmdline)
    if command[:1] == ["--"]:
        del command[0]
    opts = ProxyOptions(
        target=args.target,
        command=command,
        force=args.force,
        nohup=args.nohup,
        reconnect=args.reconnect,
        hold=args.hold,
    )
    return run_proxy(opts)
